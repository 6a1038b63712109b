"""Training engine: trainer, optimizer/param groups, LR schedules, EMA, checkpoints, logging, distributed."""
from __future__ import annotations

from detres.engine.checkpointer import Checkpointer
from detres.engine.ema import ModelEMA, unwrap
from detres.engine.optim import build_optimizer, build_param_groups
from detres.engine.schedule import WarmupCosineLR, WarmupMultiStepLR, build_lr_scheduler
from detres.engine.step import NonFiniteLossError, StepRunner
from detres.engine.trainer import Trainer

__all__ = [
    "Trainer", "StepRunner", "NonFiniteLossError", "Checkpointer", "ModelEMA", "unwrap",
    "build_optimizer", "build_param_groups", "build_lr_scheduler", "WarmupMultiStepLR", "WarmupCosineLR",
]
