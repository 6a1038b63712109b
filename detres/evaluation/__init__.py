"""COCO bbox evaluation with pycocotools semantics (own vectorized backend by default), and inference."""
from __future__ import annotations

from detres.evaluation.backends import BACKENDS, run_backend
from detres.evaluation.coco_data import Detections, GroundTruth, detections, ground_truth
from detres.evaluation.coco_evaluator import COCOEvaluator, evaluate_results, score
from detres.evaluation.from_config import build_evaluator, dataset_ground_truth, evaluate_checkpoint, run_evaluation
from detres.evaluation.inference import inference_on_dataset
from detres.evaluation.summary import STAT_NAMES, format_stats, markdown_table

__all__ = ["BACKENDS", "COCOEvaluator", "Detections", "GroundTruth", "STAT_NAMES", "build_evaluator",
           "dataset_ground_truth", "detections", "evaluate_checkpoint", "evaluate_results", "format_stats",
           "ground_truth", "inference_on_dataset", "markdown_table", "run_backend", "run_evaluation", "score"]
