"""Scoring backends: detres (own numpy, default), faster_coco_eval, pycocotools; same inputs, same arrays."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from detres.evaluation import fast_cocoeval
from detres.evaluation.coco_data import Detections, GroundTruth

BACKENDS = ("auto", "detres", "faster_coco_eval", "pycocotools")
DEFAULT_AREAS: dict[str, tuple[float, float]] = {
    "all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e5 ** 2)}


def _results_dicts(gt: GroundTruth, dt: Detections) -> list[dict]:
    img, cat = gt.img_ids[dt.img].tolist(), gt.cat_ids[dt.cat].tolist()
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(img, cat, dt.boxes.tolist(), dt.scores.tolist())]


def _reference(gt: GroundTruth, dt: Detections, max_dets: list[int], areas: dict, fast: bool) -> dict:
    """Run pycocotools (or faster_coco_eval) COCOeval on the same GT dict and detections."""
    if fast:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt.dataset)
        coco_gt.createIndex()
        res = _results_dicts(gt, dt)
        if res:
            coco_dt = coco_gt.loadRes(res)
        else:  # loadRes cannot take an empty list; score an empty detections object instead
            coco_dt = COCO()
            coco_dt.dataset = {"images": copy.deepcopy(gt.dataset["images"]), "annotations": [],
                               "categories": copy.deepcopy(gt.dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = list(max_dets)
        ev.params.areaRng = [list(v) for v in areas.values()]
        ev.params.areaRngLbl = list(areas)
        ev.evaluate()
        ev.accumulate()
    return {k: np.asarray(ev.eval[k]) for k in ("precision", "recall", "scores")}


def run_backend(backend: str, gt: GroundTruth, dt: Detections, max_dets: list[int],
                areas: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """precision [T,R,K,A,M], recall [T,K,A,M], scores [T,R,K,A,M] from the chosen backend.

    ``auto`` = ``detres``: bitwise equal to pycocotools 2.0.11 on every reference case and the fastest.
    An empty result set is scored by the chosen backend itself, on an empty detections COCO object
    (``loadRes`` refuses an empty list): all three agree on it (0 where GT exists, -1 elsewhere).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown eval backend '{backend}'; choose one of {list(BACKENDS)}")
    if backend in ("auto", "detres"):
        return fast_cocoeval.evaluate(gt, dt, max_dets, list(areas.values()))
    return _reference(gt, dt, max_dets, areas, fast=backend == "faster_coco_eval")
