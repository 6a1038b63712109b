"""COCO ground truth and detection results as flat numpy arrays, selected exactly as pycocotools does.

pycocotools semantics kept on purpose (so that every backend scores the same thing):
- evaluated images / categories = the GT's ``images`` / ``categories`` ids, sorted;
- GT annotations are looked up by id, so with duplicate ids the last one wins (and is used once per copy);
- ``area`` of a GT is its json ``area`` field; a detection's area is its box w*h (``loadRes``);
- detections of a category absent from the GT are ignored; detections of an unknown image are an error.
Boxes are COCO xywh, float64 (what pycocotools reads from json).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class GroundTruth:
    """GT of one COCO dataset.

    img_ids [I] sorted int64; cat_ids [K] sorted int64; cat_names [K];
    per annotation (pycocotools' evaluation order): img [N] / cat [N] indices into img_ids / cat_ids,
    boxes [N, 4] xywh float64, area [N] float64, crowd [N] bool, ann_id [N] int64.
    """

    img_ids: np.ndarray
    cat_ids: np.ndarray
    cat_names: list[str]
    img: np.ndarray
    cat: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    crowd: np.ndarray
    ann_id: np.ndarray
    dataset: dict
    source: str = "<ground truth>"


@dataclass
class Detections:
    """Detections: img [M] / cat [M] indices into the GT's ids, boxes [M, 4] xywh float64, scores [M],
    area [M] = w*h, all in results-file order (the order pycocotools keeps for tied scores)."""

    img: np.ndarray
    cat: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def load_json(path: str | Path) -> Any:
    """Read a json file, naming it in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json ({e})") from e


def _boxes(rows: list, what: str, ids: list, source: str) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4:
        for i, b in zip(ids, rows):
            if not isinstance(b, (list, tuple)) or len(b) != 4:
                raise ValueError(f"{source}: {what} {i} has bbox {b!r}; expected 4 numbers [x, y, w, h]")
        raise ValueError(f"{source}: {what} boxes are not all 4 numbers [x, y, w, h]")
    return arr


def ground_truth(gt: str | Path | dict, source: str | None = None) -> GroundTruth:
    """Index a COCO GT (json path, dataset dict or pycocotools COCO) the way COCO + COCOeval._prepare do."""
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):
        gt = gt.dataset
    if not isinstance(gt, dict):
        source = source or str(gt)
        gt = load_json(gt)
    source = source or "<ground truth>"
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"{source}: missing '{key}'; a COCO ground-truth file has images, annotations "
                             "and categories")
    img_ids = np.unique(np.asarray([im["id"] for im in gt["images"]], dtype=np.int64))
    names: dict[int, str] = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    cat_ids = np.asarray(sorted(names), dtype=np.int64)
    anns = gt["annotations"]
    for i, a in enumerate(anns):
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in a]
        if missing:
            raise ValueError(f"{source}: annotation #{i} (id {a.get('id')}) lacks {missing}")
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):
        # pycocotools: ids are collected per image (file order), filtered by category, then looked up in
        # an id -> annotation dict where the last duplicate wins.
        dups = sorted({i for i in ids if ids.count(i) > 1})[:5]
        logger.warning("%s: duplicate annotation ids %s; following pycocotools, the last annotation with "
                       "an id is used for every copy of it", source, dups)
        by_id = {a["id"]: a for a in anns}
        per_img: dict[Any, list] = {}
        for a in anns:
            per_img.setdefault(a["image_id"], []).append(a)
        cats = set(cat_ids.tolist())
        anns = [by_id[a["id"]] for im in img_ids.tolist() for a in per_img.get(im, [])
                if not cats or a["category_id"] in cats]
    n = len(anns)
    a_img = np.asarray([a["image_id"] for a in anns], dtype=np.int64).reshape(n)
    a_cat = np.asarray([a["category_id"] for a in anns], dtype=np.int64).reshape(n)
    boxes = _boxes([a["bbox"] for a in anns], "annotation", [a["id"] for a in anns], source)
    area = np.asarray([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns],
                      dtype=np.float64).reshape(n)
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool).reshape(n)
    ann_id = np.asarray([a["id"] for a in anns], dtype=np.int64).reshape(n)
    img, ok_i = _index(img_ids, a_img)
    cat, ok_c = _index(cat_ids, a_cat)
    keep = ok_i & ok_c
    # pycocotools visits annotations image by image (sorted ids), file order within an image.
    order = np.argsort(img[keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    if np.any(ann_id[sel] == 0):
        logger.warning("%s: annotation id 0 found; pycocotools uses 0 as its 'unmatched' marker, so a "
                       "detection matched to it counts as a false positive (followed here for parity; "
                       "renumber annotation ids from 1 to avoid it)", source)
    return GroundTruth(img_ids, cat_ids, [names[int(c)] for c in cat_ids], img[sel], cat[sel],
                       boxes[sel], area[sel], crowd[sel], ann_id[sel], gt, source)


def _index(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` in ``sorted_ids`` and a mask of those found."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_ids, values).clip(max=len(sorted_ids) - 1)
    return pos.astype(np.int64), sorted_ids[pos] == values


def results_list(results: str | Path | list | dict, source: str | None = None) -> tuple[list, str]:
    """A results file (list of detections, or a dataset-shaped dict with ``annotations``) as a list."""
    if isinstance(results, (str, Path)):
        source = source or str(results)
        results = load_json(results)
    source = source or "<results>"
    if isinstance(results, dict):
        if "annotations" not in results:
            raise ValueError(f"{source}: a results dict must hold the detections under 'annotations' "
                             f"(found keys {sorted(results)[:8]}); or give a list of detections")
        results = results["annotations"]
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a list of detections, got {type(results).__name__}")
    return results, source


def detections(results: str | Path | list | dict, gt: GroundTruth, source: str | None = None) -> Detections:
    """Detections from a COCO results file/list ({image_id, category_id, bbox xywh, score}) checked
    against ``gt`` the way pycocotools' ``loadRes`` does, with errors that name what is wrong."""
    dets, source = results_list(results, source)
    if not dets:
        logger.warning("%s: no detections; every category with ground truth scores 0", source)
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            raise ValueError(f"{source}: detection #{i} is a {type(d).__name__}, expected a dict with "
                             "image_id, category_id, bbox, score")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise ValueError(f"{source}: detection #{i} lacks {missing}; bbox evaluation needs image_id, "
                             "category_id, bbox [x, y, w, h] and score")
    m = len(dets)
    img_vals, cat_vals = [d["image_id"] for d in dets], [d["category_id"] for d in dets]
    _check_types(img_vals, "image_id", _is_int, "an integer id", source)
    _check_types(cat_vals, "category_id", _is_int, "an integer id", source)
    score_vals = [d["score"] for d in dets]
    _check_types(score_vals, "score", _is_number, "a finite number", source)
    box_rows = [d["bbox"] for d in dets]
    for i, b in enumerate(box_rows if not set(map(type, box_rows)) <= {list, tuple} else ()):
        if not isinstance(b, (list, tuple)):
            raise ValueError(f"{source}: detection #{i}: field 'bbox' is {b!r}; expected 4 numbers [x, y, w, h]")
    _check_types([v for b in box_rows for v in b], "bbox", _is_number, "4 finite numbers [x, y, w, h]", source,
                 index=lambda k: _row_of(box_rows, k))
    d_img = np.asarray(img_vals, dtype=np.int64).reshape(m)
    d_cat = np.asarray(cat_vals, dtype=np.int64).reshape(m)
    boxes = _boxes(box_rows, "detection #", list(range(m)), source)
    scores = np.asarray(score_vals, dtype=np.float64).reshape(m)
    _check_finite(boxes, scores, source)
    neg = np.flatnonzero((boxes[:, 2:] < 0).any(1))
    if len(neg):
        i = int(neg[0])
        raise ValueError(f"{source}: detection #{i}: field 'bbox' {boxes[i].tolist()} has a negative width or height "
                         f"({len(neg)} such detections); a results box is [x, y, w, h] with w, h >= 0 "
                         "(pycocotools would silently ignore it and change the score)")
    return detections_from_arrays(d_img, d_cat, boxes, scores, gt, source)


def _is_int(t: type) -> bool:
    return t is int or (issubclass(t, np.integer) and t is not np.bool_)


def _is_number(t: type) -> bool:
    return t is not bool and t is not np.bool_ and (t in (int, float) or issubclass(t, (np.integer, np.floating)))


def _row_of(rows: list, k: int) -> int:
    """Index of the row holding the ``k``-th value of the flattened ``rows``."""
    for i, r in enumerate(rows):
        if k < len(r):
            return i
        k -= len(r)
    return len(rows) - 1


def _check_types(values: list, field: str, ok: Any, expected: str, source: str, index: Any = None) -> None:
    """Raise naming the first detection whose ``field`` has a type ``ok`` refuses (one pass over types)."""
    if all(ok(t) for t in set(map(type, values))):
        return
    k = next(k for k, v in enumerate(values) if not ok(type(v)))
    i = index(k) if index is not None else k
    raise ValueError(f"{source}: detection #{i}: field '{field}' is {values[k]!r} ({type(values[k]).__name__}); "
                     f"expected {expected} (bool and strings are not accepted)")


def _check_finite(boxes: np.ndarray, scores: np.ndarray, source: str) -> None:
    for field, bad in (("bbox", ~np.isfinite(boxes).all(1)), ("score", ~np.isfinite(scores))):
        idx = np.flatnonzero(bad)
        if len(idx):
            i = int(idx[0])
            value = boxes[i].tolist() if field == "bbox" else float(scores[i])
            raise ValueError(f"{source}: detection #{i}: field '{field}' is {value} (not finite); "
                             f"{len(idx)} such detections")


def detections_from_arrays(image_ids: np.ndarray, category_ids: np.ndarray, boxes: np.ndarray,
                           scores: np.ndarray, gt: GroundTruth, source: str = "<predictions>") -> Detections:
    """Detections from arrays of COCO image ids [M], category ids [M], xywh boxes [M, 4], scores [M]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(boxes).all(1) | ~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"{source}: detection #{bad[0]} has a non-finite bbox or score "
                         f"({boxes[bad[0]].tolist()}, {scores[bad[0]]}); {len(bad)} such detections")
    img, ok_i = _index(gt.img_ids, np.asarray(image_ids, dtype=np.int64))
    if not ok_i.all():
        unknown = np.unique(np.asarray(image_ids)[~ok_i])
        raise ValueError(f"{source}: {int((~ok_i).sum())} detections refer to image ids that are not in the "
                         f"ground truth {gt.source} (e.g. {unknown[:5].tolist()}); results must come from "
                         "the same image set (check that the results match this annotation file)")
    cat, ok_c = _index(gt.cat_ids, np.asarray(category_ids, dtype=np.int64))
    if not ok_c.all():
        unknown = np.unique(np.asarray(category_ids)[~ok_c])
        logger.warning("%s: %d detections have category ids not in the ground truth (%s); they are "
                       "ignored, as pycocotools does", source, int((~ok_c).sum()), unknown[:5].tolist())
    k = ok_c
    return Detections(img[k], cat[k], boxes[k], scores[k], boxes[k, 2] * boxes[k, 3])
