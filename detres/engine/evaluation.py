"""The trainer's default evaluation: COCO metrics of a model on ``data.val`` through
``detres.evaluation`` (each rank runs its shard; the evaluator gathers)."""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from detres.utils import distributed as du

logger = logging.getLogger("detres.train")

__all__ = ["run_evaluation", "dataset_ground_truth"]


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
    from detres.data.convert import records_to_coco_dict

    return records_to_coco_dict(dataset.records, dataset.meta, Path("/"))


def _build_evaluator(cls: Any, cfg: DictConfig, dataset: Any, output_dir: str | None) -> Any:
    params = inspect.signature(cls).parameters
    eval_cfg = dict(cfg.get("eval", None) or {})
    kwargs: dict[str, Any] = {"dataset_meta": getattr(dataset, "meta", None), "output_dir": output_dir}
    kwargs.update({k: v for k, v in eval_cfg.items() if k in params and k not in kwargs})
    return cls(dataset_ground_truth(dataset), **{k: v for k, v in kwargs.items() if k in params})


def run_evaluation(cfg: DictConfig, model: nn.Module, output_dir: str | None = None) -> dict[str, Any]:
    """COCO stats of ``model`` on ``cfg.data.val`` (``{}`` with a warning when there is no validation
    set or ``detres.evaluation`` lacks its evaluator)."""
    if not cfg.get("data", None) or not cfg.data.get("val", None):
        logger.warning("no data.val in the config: evaluation skipped")
        return {}
    try:
        from detres.evaluation import COCOEvaluator, inference_on_dataset
    except ImportError as e:
        logger.warning("evaluation skipped: detres.evaluation has no COCOEvaluator/inference_on_dataset (%s)", e)
        return {}
    from detres.data import build_test_loader

    loader = build_test_loader(cfg, rank=du.get_rank(), world_size=du.get_world_size())
    evaluator = _build_evaluator(COCOEvaluator, cfg, loader.dataset, output_dir)
    results = inference_on_dataset(model, loader, evaluator)
    return dict(results or {})

