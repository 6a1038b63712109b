"""Schemas of the config sections that have no ``_target_``: their keys are fixed here.

Sections with a ``_target_`` (``model``, ``optimizer``, ``lr_scheduler``, datasets, transforms) are
checked against their constructor's signature instead (see ``validate.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """``train:`` keys: the trainer's schedule, batching, precision and output."""

    output_dir: str = "output"
    max_iter: int = 1000
    epochs: int | None = None
    batch_size: int = 2
    eval_period: int = 0
    checkpoint_period: int = 0
    keep_last: int = 3
    best_metric: str | None = "AP"
    seed: int = 42
    deterministic: bool = False
    log_period: int = 20
    amp: str | None = None  # None | fp16 | bf16
    clip_grad: float | None = None
    clip_grad_type: str = "norm"  # norm | value
    accumulate: int = 1
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: int = 2000
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    backbone_lr_mult: float = 1.0
    weight_decay_norm: float = 0.0
    weight_decay_bias: float | None = None
    device: str = "auto"
    tensorboard: bool = True
    init_weights: str | None = None


@dataclass
class EvalConfig:
    """``eval:`` keys: evaluation batching, padding policy and scoring backend."""

    batch_size: int = 1
    backend: str = "auto"  # auto | faster_coco_eval | pycocotools | detres
    max_dets: list[int] = field(default_factory=lambda: [1, 10, 100])
    pad_policy: str | None = None  # None: the model's input.pad_policy_test
    per_category: bool = True
    pr_curve: bool = False
    max_images: int | None = None


@dataclass
class DataConfig:
    """``data:`` keys: datasets, transforms and loader settings."""

    train: Any = None
    val: Any = None
    train_transforms: Any = None
    val_transforms: Any = None
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    filter_empty: bool = True
    pin_memory: bool = True


#: top-level key -> dataclass schema, or None for a ``_target_`` node / plain value.
TOP_LEVEL: dict[str, Any] = {
    "model": None,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "optimizer": None,
    "lr_scheduler": None,
    "num_classes": None,
    "custom_imports": None,
    "class_names": None,
}
