"""Validate a COCO json + image folder: every problem with its id, counts per category, box sizes."""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from detres.data.io import is_truncated_jpeg

SIZE_BINS = [0, 8, 16, 32, 64, 96, 128, 256, 512, math.inf]


class Report:
    """Errors (make the dataset unusable or wrong) and warnings (suspicious), each naming ids."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.tables: list[str] = []


def check_coco(ann_file: str | os.PathLike, image_dir: str | os.PathLike | None, *, decode: bool = False) -> Report:
    """Check ``ann_file`` (and the images under ``image_dir`` unless None); ``decode`` fully decodes each."""
    rep = Report()
    data = json.loads(Path(ann_file).read_text())
    for key in ("images", "annotations", "categories"):
        if key not in data:
            rep.errors.append(f"missing top-level key '{key}'")
    images, anns, cats = data.get("images", []), data.get("annotations", []), data.get("categories", [])
    if "images" in data and not images:
        rep.errors.append(f"{ann_file}: 'images' is empty: no image to train or evaluate on; check the "
                          "conversion that wrote this file")
    if "categories" in data and not cats:
        rep.errors.append(f"{ann_file}: 'categories' is empty: a detector needs at least one class")
    img_ids: Counter = Counter()
    by_id: dict[Any, dict] = {}
    for i, img in enumerate(images):
        miss = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if miss:
            rep.errors.append(f"images[{i}] (id {img.get('id')}): missing key(s) {miss}")
            continue
        img_ids[img["id"]] += 1
        by_id[img["id"]] = img
        if not isinstance(img["id"], int):
            rep.warnings.append(f"image {img['file_name']}: id {img['id']!r} is not an integer (detres renumbers it)")
    for iid, n in img_ids.items():
        if n > 1:
            rep.errors.append(f"image id {iid}: used by {n} images")
    cat_ids = Counter(c.get("id") for c in cats)
    for cid, n in cat_ids.items():
        if n > 1:
            rep.errors.append(f"category id {cid}: used by {n} categories")
    if 0 in cat_ids:
        rep.warnings.append("category id 0 present (0-based ids); detres maps ids to labels itself, other tools may "
                            "treat 0 as background")
    if 0 in img_ids:
        rep.warnings.append("image id 0 present (0-based ids); some tools treat 0 as 'no image'")
    ann_ids: Counter = Counter()
    per_cat: Counter = Counter()
    sizes: Counter = Counter()
    for i, a in enumerate(anns):
        miss = [k for k in ("id", "image_id", "category_id", "bbox") if k not in a]
        if miss:
            rep.errors.append(f"annotations[{i}] (id {a.get('id')}): missing key(s) {miss}")
            continue
        ann_ids[a["id"]] += 1
        img = by_id.get(a["image_id"])
        where = f"annotation {a['id']} (image id {a['image_id']}{', ' + img['file_name'] if img else ''})"
        if img is None:
            rep.errors.append(f"{where}: image id not in 'images'")
        if a["category_id"] not in cat_ids:
            rep.errors.append(f"{where}: unknown category_id {a['category_id']}")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in b):
            rep.errors.append(f"{where}: bbox {b!r} is not 4 finite numbers [x, y, w, h]")
            continue
        x, y, w, h = b
        if w <= 0 or h <= 0:
            rep.errors.append(f"{where}: degenerate bbox {b} (width or height <= 0)")
            continue
        if img is not None and (x < 0 or y < 0 or x + w > img["width"] + 0.5 or y + h > img["height"] + 0.5):
            rep.warnings.append(f"{where}: bbox {b} extends outside the {img['width']}x{img['height']} image")
        per_cat[a["category_id"]] += 1
        side = math.sqrt(w * h)
        sizes[next(k for k in range(len(SIZE_BINS) - 1) if side < SIZE_BINS[k + 1])] += 1
    for aid, n in ann_ids.items():
        if n > 1:
            rep.errors.append(f"annotation id {aid}: used by {n} annotations")
    for c in cats:
        if per_cat[c.get("id")] == 0:
            rep.warnings.append(f"category {c.get('id')} ({c.get('name')}): no annotations")
    if image_dir is not None:
        _check_images(rep, list(by_id.values()), Path(image_dir), decode)
    name_w = max([len(str(c.get("name"))) for c in cats] + [8])
    rows = [f"{'id':>5}  {'category':<{name_w}}  {'boxes':>8}"]
    rows += [f"{c.get('id'):>5}  {str(c.get('name')):<{name_w}}  {per_cat[c.get('id')]:>8}" for c in cats]
    rep.tables.append("\n".join(rows))
    hist = ["box size sqrt(w*h) px   count"]
    for k in range(len(SIZE_BINS) - 1):
        lo, hi = SIZE_BINS[k], SIZE_BINS[k + 1]
        hist.append(f"  [{lo:>4}, {hi if hi != math.inf else 'inf':>4})  {sizes[k]:>8}  " + "#" * min(50, sizes[k]
                    * 50 // max(1, max(sizes.values(), default=1))))
    rep.tables.append("\n".join(hist))
    return rep


def _check_images(rep: Report, images: list[dict], root: Path, decode: bool) -> None:
    from PIL import Image

    from detres.data.io import ImageReadError, read_image

    for img in images:
        fn = img["file_name"]
        path = root / fn
        if not path.exists() and os.path.isabs(fn) and (root / os.path.basename(fn)).exists():
            path = root / os.path.basename(fn)
        where = f"image id {img['id']} ({path})"
        if not path.is_file():
            rep.errors.append(f"{where}: file not found")
            continue
        try:
            if decode:
                read_image(path, img["id"], (img["height"], img["width"]))
                continue
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(max(0, path.stat().st_size - 1024))
                if is_truncated_jpeg(head + f.read()):
                    rep.errors.append(f"{where}: truncated JPEG (no end-of-image marker)")
                    continue
            with Image.open(path) as im:
                w, h = im.size
            if (h, w) != (img["height"], img["width"]):
                rep.errors.append(f"{where}: file is {w}x{h} but the json says {img['width']}x{img['height']}")
        except (ImageReadError, OSError) as e:
            rep.errors.append(f"{where}: unreadable: {e}")
