"""Scoring detections against a COCO ground truth: the 12 stats and the per-category table.

Imports numpy and the evaluation modules only (no torch), so that ``tools/eval.py --gt A --results R``
starts in a fraction of a second.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detres.evaluation.backends import DEFAULT_AREAS, run_backend
from detres.evaluation.coco_data import GroundTruth, detections, ground_truth
from detres.evaluation.summary import per_category, save_outputs, summarize

__all__ = ["evaluate_results", "score"]


def _areas(area_ranges: dict | Sequence | None) -> dict[str, tuple[float, float]]:
    if area_ranges is None:
        return dict(DEFAULT_AREAS)
    if not isinstance(area_ranges, dict):  # flat [lo, hi, lo, hi, ...] or [[lo, hi], ...]
        flat = np.asarray(area_ranges, dtype=np.float64).reshape(-1, 2)
        labels = list(DEFAULT_AREAS) if len(flat) == 4 else ["all"] + [f"range{i}" for i in range(1, len(flat))]
        area_ranges = dict(zip(labels, flat.tolist()))
    if "all" not in area_ranges:
        raise ValueError(f"area_ranges {area_ranges} needs an 'all' range (e.g. [0, 1e10])")
    return {k: (float(v[0]), float(v[1])) for k, v in area_ranges.items()}


def score(gt: GroundTruth, dets, *, backend: str = "auto", max_dets: Sequence[int] = (1, 10, 100),
          area_ranges=None, output_dir: str | Path | None = None, pr_curve: bool = False) -> dict[str, Any]:
    """Score ``dets`` (Detections) against ``gt``: the 12 stats + ``per_category`` (list of dicts)."""
    max_dets = sorted(int(m) for m in max_dets)
    areas = _areas(area_ranges)
    ev = run_backend(backend, gt, dets, max_dets, areas)
    labels = list(areas)
    metrics: dict[str, Any] = summarize(ev, max_dets, labels)
    rows = per_category(ev, max_dets, labels, gt.cat_ids.tolist(), gt.cat_names)
    metrics["per_category"] = rows
    if output_dir is not None:
        save_outputs(output_dir, ev, metrics, rows, gt.cat_ids.tolist(), gt.cat_names, labels, max_dets, pr_curve)
    return metrics


def evaluate_results(gt: str | Path | dict, results: str | Path | list | dict, **kwargs: Any) -> dict[str, Any]:
    """Score a COCO results file (or list) against a GT file (or dict); kwargs as :func:`score`."""
    g = ground_truth(gt)
    return score(g, detections(results, g), **kwargs)
