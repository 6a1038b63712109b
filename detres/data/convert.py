"""Records -> COCO json dict (what ``tools/convert_dataset.py`` writes)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detres.data.meta import DatasetMeta


def records_to_coco_dict(records: list[dict[str, Any]], meta: DatasetMeta, image_root: Path) -> dict[str, Any]:
    """COCO detection json with bbox = [x0, y0, x1 - x0, y1 - y0] of the records' xyxy boxes,
    area = w * h, file names relative to ``image_root``, category ids from ``meta``."""
    images, anns = [], []
    for r in records:
        images.append({"id": r["image_id"], "file_name": os.path.relpath(r["file_name"], image_root),
                       "height": r["height"], "width": r["width"]})
        for box, label, crowd, ann_id in zip(r["boxes"].tolist(), r["labels"].tolist(), r["iscrowd"].tolist(),
                                             r["ann_ids"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": int(ann_id), "image_id": r["image_id"], "category_id": meta.cat_id_of(label),
                         "bbox": [_num(box[0]), _num(box[1]), _num(w), _num(h)], "area": _num(w * h),
                         "iscrowd": int(crowd)})
    cats = [{"id": c, "name": n, "supercategory": "none"} for c, n in zip(meta.cat_ids, meta.class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _num(v: float) -> float | int:
    """Ints stay ints in the json (VOC pixel coordinates), other values keep 3 decimals."""
    r = round(float(v), 3)
    return int(r) if r == int(r) else r


class CocoView:
    """Mixin for non-COCO datasets with ``to_coco_dict()``: a lazily built pycocotools index as
    ``.coco`` (what the evaluator scores against) and ``ann_file = None``."""

    ann_file: str | None = None
    _coco: Any = None

    @property
    def coco(self) -> Any:
        """pycocotools COCO index of ``to_coco_dict()`` (built on first use)."""
        if self._coco is None:
            from detres.data.coco import build_coco_index

            self._coco = build_coco_index(self.to_coco_dict())  # type: ignore[attr-defined]
        return self._coco
