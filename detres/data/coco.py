"""``CocoDetection``: a COCO-format json + an image folder, through a pycocotools index."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from detres.data.base import DetectionDataset, make_record, sanitize_records
from detres.data.meta import DatasetMeta
from detres.registry import DATASETS

logger = logging.getLogger("detres.data")

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def datasets_root() -> Path:
    """``$DETRES_DATASETS``, default ``./datasets``."""
    return Path(os.environ.get("DETRES_DATASETS", "datasets"))


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists (or is absolute), else under ``$DETRES_DATASETS``."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = datasets_root() / p
    return alt if alt.exists() else p


def load_coco_json(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO json; errors name the file and what is wrong."""
    path = resolve_path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file not found: {ann_file} (also looked under $DETRES_DATASETS={datasets_root()}). "
            "See datasets/README.md for the expected layout.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object with 'images', 'annotations', 'categories'.")
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{path}: missing top-level key '{key}'; a COCO detection json needs "
                             "'images', 'annotations' and 'categories'.")
    if "annotations" not in data:
        logger.warning("%s: no 'annotations' key: treating every image as unannotated", path)
        data["annotations"] = []
    return data


def meta_from_categories(categories: list[dict[str, Any]], where: str) -> DatasetMeta:
    """DatasetMeta from a json's categories, sorted by id (label k = k-th smallest id)."""
    for i, c in enumerate(categories):
        for key in ("id", "name"):
            if key not in c:
                raise ValueError(f"{where}: categories[{i}] has no '{key}'; every category needs 'id' and 'name'.")
    cats = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{where}: duplicate category ids {dup}; each category needs its own id.")
    return DatasetMeta([c["name"] for c in cats], ids)


def normalize_coco_dict(data: dict[str, Any], where: str, image_root: Path | None = None) -> dict[str, Any]:
    """Check required keys and make image ids ints (string ids, as in some converters' output,
    are renumbered 1..N in file order, with a warning). Returns a new dict; raises ValueError
    naming the image / annotation and the missing key otherwise."""
    images = []
    for i, img in enumerate(data["images"]):
        for key in _IMAGE_KEYS:
            if key not in img:
                raise ValueError(f"{where}: images[{i}] (id {img.get('id')}, file {img.get('file_name')}) has no "
                                 f"'{key}'; every image needs {', '.join(_IMAGE_KEYS)}.")
        images.append(dict(img))
    ids = [img["id"] for img in images]
    remap: dict[Any, int] | None = None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        remap = {old: k + 1 for k, old in enumerate(ids)}
        logger.warning("%s: image ids are not integers (e.g. %r); renumbered 1..%d in file order (the original "
                       "id is kept as 'orig_id')", where, ids[0], len(ids))
        for img in images:
            img["orig_id"], img["id"] = img["id"], remap[img["id"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate image ids; run tools/check_dataset.py to list them.")
    if image_root is not None:
        moved = 0
        for img in images:
            fn = img["file_name"]
            if os.path.isabs(fn) and not os.path.exists(fn) and (image_root / os.path.basename(fn)).exists():
                img["file_name"], moved = os.path.basename(fn), moved + 1
        if moved:
            logger.warning("%s: %d absolute file_name paths do not exist; using their base names under %s",
                           where, moved, image_root)
    anns = []
    for i, ann in enumerate(data["annotations"]):
        for key in _ANN_KEYS:
            if key not in ann:
                raise ValueError(f"{where}: annotations[{i}] (id {ann.get('id')}, image id {ann.get('image_id')}) "
                                 f"has no '{key}'; every annotation needs {', '.join(_ANN_KEYS)}.")
        ann = dict(ann)
        if remap is not None:
            if ann["image_id"] not in remap:
                raise ValueError(f"{where}: annotation {ann['id']} points at image id {ann['image_id']!r}, "
                                 "which is not in 'images'.")
            ann["image_id"] = remap[ann["image_id"]]
        anns.append(ann)
    return {**data, "images": images, "annotations": anns}


def build_coco_index(data: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` index over an in-memory dict (quietly)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@DATASETS.register()
class CocoDetection(DetectionDataset):
    """A COCO-format detection dataset.

    ann_file: the json (relative paths are also looked up under ``$DETRES_DATASETS``);
    image_root: the folder that ``file_name`` is relative to. Labels are contiguous 0..K-1 in the
    order of increasing category id (``.meta``); crowd boxes are kept with ``iscrowd`` True as
    ignore regions; invalid boxes are clipped or dropped and counted (one log line);
    ``filter_empty`` drops images without non-crowd boxes (None: the loader decides, True for
    training). ``.coco`` is the pycocotools index over the (id-normalized) json.
    """

    def __init__(self, ann_file: str, image_root: str, filter_empty: bool | None = None, transforms: Any = None,
                 *, on_bad_image: str = "raise") -> None:
        self.ann_file = str(resolve_path(ann_file))
        root = resolve_path(image_root)
        data = normalize_coco_dict(load_coco_json(ann_file), self.ann_file, root)
        meta = meta_from_categories(data["categories"], self.ann_file)
        self.coco = build_coco_index(data)
        label_of = {c: k for k, c in enumerate(meta.cat_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            if ann["image_id"] not in by_image:
                raise ValueError(f"{self.ann_file}: annotation {ann['id']} points at image id {ann['image_id']}, "
                                 "which is not in 'images'. Remove the annotation or add the image.")
            if ann["category_id"] not in label_of:
                raise ValueError(f"{self.ann_file}: annotation {ann['id']} (image id {ann['image_id']}) has unknown "
                                 f"category_id {ann['category_id']}; known ids: {meta.cat_ids}.")
            by_image[ann["image_id"]].append(ann)
        records = []
        for img in data["images"]:
            anns = by_image[img["id"]]
            try:
                xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            except (ValueError, TypeError):
                bad = next(a for a in anns if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4))
                raise ValueError(f"{self.ann_file}: annotation {bad['id']} (image {img['file_name']}) has bbox "
                                 f"{bad['bbox']!r}; expected [x, y, w, h].") from None
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            records.append(make_record(
                img["id"], str(root / img["file_name"]), img["height"], img["width"], boxes,
                [label_of[a["category_id"]] for a in anns],
                [bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)) for a in anns], [a["id"] for a in anns]))
        name = f"CocoDetection({Path(self.ann_file).name})"
        records, self.box_stats = sanitize_records(records, name)
        super().__init__(records, meta, transforms, name=name, filter_empty=bool(filter_empty),
                         on_bad_image=on_bad_image)

    @staticmethod
    def read_meta(ann_file: str, **_: Any) -> DatasetMeta:
        """The DatasetMeta of ``ann_file`` without building the dataset (for ``num_classes: auto``)."""
        return meta_from_categories(load_coco_json(ann_file)["categories"], str(ann_file))
