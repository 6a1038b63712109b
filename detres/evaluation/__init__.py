"""COCO bbox evaluation with pycocotools semantics (own vectorized backend by default), and inference.

Scoring a results file (``evaluate_results``, ``score``, the backends and summaries) imports numpy only;
the names that need torch (``COCOEvaluator``, inference, evaluation from a config) load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from detres.evaluation.backends import BACKENDS, run_backend
from detres.evaluation.coco_data import Detections, GroundTruth, detections, ground_truth
from detres.evaluation.scoring import evaluate_results, score
from detres.evaluation.summary import STAT_NAMES, format_stats, markdown_table

#: name -> module, imported on first access (they import torch)
_LAZY = {
    "COCOEvaluator": "detres.evaluation.coco_evaluator",
    "build_evaluator": "detres.evaluation.from_config",
    "dataset_ground_truth": "detres.evaluation.from_config",
    "evaluate_checkpoint": "detres.evaluation.from_config",
    "run_evaluation": "detres.evaluation.from_config",
    "inference_on_dataset": "detres.evaluation.inference",
}

__all__ = ["BACKENDS", "COCOEvaluator", "Detections", "GroundTruth", "STAT_NAMES", "build_evaluator",
           "dataset_ground_truth", "detections", "evaluate_checkpoint", "evaluate_results", "format_stats",
           "ground_truth", "inference_on_dataset", "markdown_table", "run_backend", "run_evaluation", "score"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detres.evaluation' has no attribute {name!r}")
