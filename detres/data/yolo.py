"""``YoloDetection``: YOLO txt labels (``class cx cy w h``, normalized to [0, 1]), ultralytics layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from detres.data.base import DetectionDataset, make_record, sanitize_records
from detres.data.coco import resolve_path
from detres.data.convert import CocoView, records_to_coco_dict
from detres.data.io import image_size
from detres.data.meta import DatasetMeta
from detres.registry import DATASETS
from detres.structures.boxes import cxcywh_to_xyxy, denormalize_boxes

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def yolo_class_names(root: Path) -> list[str]:
    """Class names from ``root/classes.txt`` (one per line) or ``root/data.yaml`` (``names``)."""
    if (root / "classes.txt").is_file():
        return [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    if (root / "data.yaml").is_file():
        names = (yaml.safe_load((root / "data.yaml").read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise FileNotFoundError(f"{root}: no classes.txt or data.yaml with 'names'; pass class_names explicitly.")


def parse_yolo_txt(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N] int64, normalized cxcywh [N, 4] float32) of one label file (missing file: no boxes)."""
    if not path.is_file():
        return np.zeros((0,), np.int64), np.zeros((0, 4), np.float32)
    labels, boxes = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, vals = int(parts[0]), [float(v) for v in parts[1:5]]
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}") from None
        if len(vals) != 4:
            raise ValueError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}")
        if not 0 <= cls < num_classes:
            raise ValueError(f"{path}:{n}: class index {cls} outside 0..{num_classes - 1} (from the class names).")
        labels.append(cls)
        boxes.append(vals)
    return np.array(labels, np.int64), np.array(boxes, np.float32).reshape(-1, 4)


def yolo_records(root: str, split: str, class_names: list[str] | None = None) -> tuple[list[dict[str, Any]], DatasetMeta]:
    """Raw records of ``root/images/<split>/*`` with labels from ``root/labels/<split>/*.txt``."""
    rootp = resolve_path(root)
    img_dir = rootp / "images" / split
    if not img_dir.is_dir():
        raise FileNotFoundError(f"YOLO images folder not found: {img_dir} (expected root/images/<split>/).")
    meta = DatasetMeta(list(class_names) if class_names is not None else yolo_class_names(rootp), [])
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    records, ann_id = [], 1
    for i, f in enumerate(files):
        h, w = image_size(f)
        labels, cxcywh = parse_yolo_txt(rootp / "labels" / split / f"{f.stem}.txt", meta.num_classes)
        boxes = denormalize_boxes(cxcywh_to_xyxy(torch.from_numpy(cxcywh)), (h, w)).numpy()
        records.append(make_record(i + 1, str(f), h, w, boxes, labels, np.zeros(len(labels), bool),
                                   np.arange(ann_id, ann_id + len(labels))))
        ann_id += len(labels)
    return records, meta


@DATASETS.register()
class YoloDetection(CocoView, DetectionDataset):
    """YOLO txt dataset: ``root/images/<split>/``, ``root/labels/<split>/``, class names from
    ``class_names``, ``root/classes.txt`` or ``root/data.yaml``. Category ids are 1..K."""

    def __init__(self, root: str, split: str = "train", class_names: list[str] | None = None,
                 filter_empty: bool | None = None, transforms: Any = None, *, on_bad_image: str = "raise") -> None:
        self.root, self.split = str(resolve_path(root)), split
        raw, meta = yolo_records(root, split, class_names)
        self._raw_records = raw
        name = f"YoloDetection({Path(self.root).name}/{split})"
        records, self.box_stats = sanitize_records(raw, name)
        super().__init__(records, meta, transforms, name=name, filter_empty=bool(filter_empty),
                         on_bad_image=on_bad_image)

    def to_coco_dict(self) -> dict[str, Any]:
        """The split as a COCO json dict (file names relative to ``root/images/<split>``)."""
        return records_to_coco_dict(self._raw_records, self.meta, Path(self.root) / "images" / self.split)

    @staticmethod
    def read_meta(root: str, class_names: list[str] | None = None, **_: Any) -> DatasetMeta:
        """The DatasetMeta without reading the labels."""
        return DatasetMeta(list(class_names) if class_names is not None else yolo_class_names(resolve_path(root)))
