"""``--eval-only`` of a training run: score given weights, or the run's newest checkpoint, on
``data.val`` with the evaluation path every tool shares (``detres.evaluation.run_evaluation``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from detres.engine.checkpointer import Checkpointer
from detres.engine.trainer import resolve_device
from detres.evaluation import evaluate_checkpoint
from detres.utils import distributed as du

logger = logging.getLogger("detres.train")

__all__ = ["eval_only"]


def eval_only(cfg: DictConfig, weights: str | None = None) -> dict[str, Any]:
    """Evaluate ``weights`` (default: ``train.init_weights`` or the run's last checkpoint), EMA weights
    first, on ``train.device``; rank 0 writes ``train.output_dir/eval_only.json``."""
    out = Path(cfg.train.output_dir)
    path = weights or cfg.train.init_weights or Checkpointer(out, save_to_disk=False).latest()
    if path is None:
        raise FileNotFoundError(f"--eval-only needs --weights W (no checkpoint in {out}/last_checkpoint)")
    results = evaluate_checkpoint(cfg, path, device=resolve_device(cfg.train.device), log=logger.info)
    if du.is_main_process() and results:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_only.json").write_text(json.dumps({"weights": str(path), **results}, indent=1, default=float))
    return results
