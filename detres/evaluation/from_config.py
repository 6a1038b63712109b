"""COCO evaluation of a model from a config: the one path that the trainer, ``detres train --eval-only``
and ``detres eval --config`` share (each rank runs its shard of ``data.val``; the evaluator gathers)."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from detres.evaluation.coco_evaluator import COCOEvaluator
from detres.evaluation.inference import inference_on_dataset
from detres.utils import distributed as du

logger = logging.getLogger("detres.evaluation")

__all__ = ["dataset_ground_truth", "build_evaluator", "run_evaluation", "evaluate_checkpoint"]


def dataset_ground_truth(dataset: Any) -> Any:
    """The val set's COCO ground truth, with the image ids the dataset's samples carry.

    The dataset's own pycocotools index comes first (it holds renumbered ids of files with string
    ids, and VOC / YOLO sets build one); then its json file; then a COCO dict made from its records.
    """
    coco = getattr(dataset, "coco", None)
    if coco is not None and isinstance(getattr(coco, "dataset", None), dict):
        return coco.dataset
    ann_file = getattr(dataset, "ann_file", None)
    if ann_file and str(ann_file).endswith(".json") and Path(ann_file).is_file():
        return str(ann_file)
    if not hasattr(dataset, "records"):
        raise ValueError(f"{type(dataset).__name__} has neither .coco, a json .ann_file nor .records: "
                         "COCO evaluation needs COCO ground truth")
    from detres.data.convert import records_to_coco_dict

    return records_to_coco_dict(dataset.records, dataset.meta, Path("/"))


def build_evaluator(cfg: DictConfig, dataset: Any, output_dir: str | Path | None = None,
                    **overrides: Any) -> COCOEvaluator:
    """The COCOEvaluator of ``dataset`` with the ``eval:`` keys it accepts (``backend``, ``max_dets``,
    ``pr_curve``); ``overrides`` that are not None (e.g. a command line's ``area_ranges``) win."""
    params = inspect.signature(COCOEvaluator).parameters
    kwargs: dict[str, Any] = {k: v for k, v in dict(cfg.get("eval", None) or {}).items() if k in params}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    kwargs["max_dets"] = list(kwargs.get("max_dets", [1, 10, 100]))
    return COCOEvaluator(dataset_ground_truth(dataset), dataset_meta=getattr(dataset, "meta", None),
                         output_dir=output_dir, **kwargs)


def run_evaluation(cfg: DictConfig, model: nn.Module, output_dir: str | Path | None = None, *,
                   batch_size: int | None = None, progress: bool = True, **evaluator_args: Any) -> dict[str, Any]:
    """COCO stats of ``model`` on ``cfg.data.val`` (``{}`` with a warning when there is no validation
    set; ``{}`` on ranks other than 0). ``batch_size`` defaults to ``eval.batch_size``;
    ``evaluator_args`` go to :func:`build_evaluator`."""
    if not cfg.get("data", None) or not cfg.data.get("val", None):
        logger.warning("no data.val in the config: evaluation skipped")
        return {}
    from detres.data import build_test_loader

    loader = build_test_loader(cfg, batch_size=batch_size, rank=du.get_rank(), world_size=du.get_world_size())
    evaluator = build_evaluator(cfg, loader.dataset, output_dir, **evaluator_args)
    results = inference_on_dataset(model, loader, evaluator, progress=progress)
    return dict(results or {})


def evaluate_checkpoint(cfg: DictConfig, weights: str | Path, *, device: Any = None,
                        log: Callable[[str], None] = logger.info, **kwargs: Any) -> dict[str, Any]:
    """Build ``cfg.model``, load ``weights`` (the EMA weights when the checkpoint has them: training
    evaluates those), optionally move it to ``device``, and :func:`run_evaluation` it with ``kwargs``."""
    from detres.checkpoint import load_checkpoint
    from detres.modeling import build_model

    model = build_model(cfg)
    log(f"{weights}: {load_checkpoint(model, weights, use_ema=True)}")
    if device is not None:
        model.to(device)
    return run_evaluation(cfg, model.eval(), **kwargs)
