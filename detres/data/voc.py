"""``VocDetection``: Pascal VOC XML annotations (1-based inclusive pixel coordinates, difficult flag)."""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from detres.data.base import DetectionDataset, make_record, sanitize_records
from detres.data.coco import resolve_path
from detres.data.convert import CocoView, records_to_coco_dict
from detres.data.io import image_size
from detres.data.meta import DatasetMeta
from detres.registry import DATASETS

logger = logging.getLogger("detres.data")

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """One VOC XML -> {"filename", "height", "width", "objects": [(name, [x0, y0, x1, y1], difficult)]}.

    VOC boxes are 1-based and inclusive; they become 0-based continuous xyxy as
    (xmin - 1, ymin - 1, xmax, ymax), the convention of detectron2 and of COCO conversions
    (COCO bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML: {e}") from None
    size = root.find("size")
    h = w = None
    if size is not None and size.findtext("height") and size.findtext("width"):
        h, w = int(float(size.findtext("height"))), int(float(size.findtext("width")))
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name, bb = obj.findtext("name"), obj.find("bndbox")
        if name is None or bb is None:
            raise ValueError(f"{path}: object #{i} has no <name> or <bndbox>.")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object #{i} ({name}) has a missing or non-numeric bndbox coordinate.") from None
        difficult = int(float(obj.findtext("difficult") or 0))
        objects.append((name.strip(), [x0 - 1, y0 - 1, x1, y1], bool(difficult)))
    return {"filename": root.findtext("filename"), "height": h, "width": w, "objects": objects}


def read_split(root: Path, split: str) -> list[str]:
    """Image stems listed in ``root/ImageSets/Main/{split}.txt``."""
    f = root / "ImageSets" / "Main" / f"{split}.txt"
    if not f.is_file():
        avail = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise FileNotFoundError(f"VOC split file not found: {f}. Available splits: {avail or 'none'}.")
    return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]


def voc_records(root: str, split: str, class_names: list[str] | None = None,
                difficult: str = "keep") -> tuple[list[dict[str, Any]], DatasetMeta]:
    """Parse a VOC split into raw records (image ids 1..N in split order) and its DatasetMeta.

    class_names None: the 20 VOC classes when every name found is one of them, else the sorted
    names found (pass ``class_names`` to fix the order across splits). ``difficult``: "keep"
    (as a normal box), "ignore" (iscrowd True) or "drop".
    """
    if difficult not in ("keep", "ignore", "drop"):
        raise ValueError(f"difficult must be 'keep', 'ignore' or 'drop', got {difficult!r}")
    rootp = resolve_path(root)
    parsed = [(stem, parse_voc_xml(rootp / "Annotations" / f"{stem}.xml")) for stem in read_split(rootp, split)]
    if class_names is None:
        found = sorted({o[0] for _, p in parsed for o in p["objects"]})
        class_names = VOC_CLASSES if set(found) <= set(VOC_CLASSES) else found
        if class_names is found:
            logger.info("VOC %s/%s: classes from the annotations (sorted): %s; set class_names to fix the order",
                        rootp, split, found)
    meta = DatasetMeta(list(class_names))
    label_of = {n: k for k, n in enumerate(meta.class_names)}
    records, ann_id = [], 1
    for i, (stem, p) in enumerate(parsed):
        xml = rootp / "Annotations" / f"{stem}.xml"
        file_name = rootp / "JPEGImages" / (p["filename"] or f"{stem}.jpg")
        if not file_name.exists() and (rootp / "JPEGImages" / f"{stem}.jpg").exists():
            file_name = rootp / "JPEGImages" / f"{stem}.jpg"
        h, w = (p["height"], p["width"]) if p["height"] else image_size(file_name)
        objs = [o for o in p["objects"] if not (difficult == "drop" and o[2])]
        for name, _, _ in objs:
            if name not in label_of:
                raise ValueError(f"{xml}: unknown class '{name}'; class_names is {meta.class_names}.")
        boxes = np.array([o[1] for o in objs], np.float32).reshape(-1, 4)
        records.append(make_record(i + 1, str(file_name), h, w, boxes, [label_of[o[0]] for o in objs],
                                   [difficult == "ignore" and o[2] for o in objs],
                                   np.arange(ann_id, ann_id + len(objs))))
        ann_id += len(objs)
    return records, meta


@DATASETS.register()
class VocDetection(CocoView, DetectionDataset):
    """Pascal VOC layout: ``root/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``.

    Yields the same Samples as CocoDetection; ``to_coco_dict()`` gives the equivalent COCO json
    (category ids 1..K in class order, file names relative to ``root/JPEGImages``).
    """

    def __init__(self, root: str, split: str = "train", class_names: list[str] | None = None,
                 filter_empty: bool | None = None, transforms: Any = None, *, difficult: str = "keep",
                 on_bad_image: str = "raise") -> None:
        self.root, self.split = str(resolve_path(root)), split
        raw, meta = voc_records(root, split, class_names, difficult)
        self._raw_records = raw
        name = f"VocDetection({Path(self.root).name}/{split})"
        records, self.box_stats = sanitize_records(raw, name)
        super().__init__(records, meta, transforms, name=name, filter_empty=bool(filter_empty),
                         on_bad_image=on_bad_image)

    def to_coco_dict(self) -> dict[str, Any]:
        """The split as a COCO json dict, boxes exactly as in the XML (before any clipping)."""
        return records_to_coco_dict(self._raw_records, self.meta, Path(self.root) / "JPEGImages")

    @staticmethod
    def read_meta(root: str, split: str = "train", class_names: list[str] | None = None, **_: Any) -> DatasetMeta:
        """The DatasetMeta without building the dataset."""
        if class_names is not None:
            return DatasetMeta(list(class_names))
        return voc_records(root, split, None)[1]
