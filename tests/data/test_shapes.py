"""Synthetic shapes: deterministic from the seed, valid COCO json, boxes tight around the shapes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from detres.cli.make_shapes import main as make_main
from detres.data.shapes import make_image


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(d).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_make_shapes_deterministic_and_valid(tmp_path: Path) -> None:
    for name, seed, workers in (("a", 1, 1), ("b", 1, 2), ("c", 2, 1)):
        assert make_main(["--out", str(tmp_path / name), "--num-train", "70", "--num-val", "4", "--seed", str(seed),
                          "--workers", str(workers)]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    for split, n in (("train", 70), ("val", 4)):
        ann = tmp_path / "a" / "annotations" / f"instances_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann))
        assert len(coco.getImgIds()) == n and len(list((tmp_path / "a" / split).glob("*.jpg"))) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["rectangle", "ellipse", "triangle"]
        for a in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
    assert json.loads(ann.read_text())["annotations"][0]["id"] == 1


def test_shapes_statistics_and_tight_boxes() -> None:
    counts, sides, empty = np.zeros(3, int), [], 0
    for i in range(200):
        img, boxes, labels = make_image(np.random.default_rng(i))
        empty += len(boxes) == 0
        counts += np.bincount(labels, minlength=3)
        sides += np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    assert 2 <= empty <= 25 and (counts > 150).all()
    sides = np.array(sides)
    assert (sides < 32).mean() > 0.2 and (sides > 96).mean() > 0.1 and ((sides >= 32) & (sides <= 96)).mean() > 0.2
    # a lone rectangle fills its box exactly with one colour
    for i in range(50):
        img, boxes, labels = make_image(np.random.default_rng(1000 + i), max_objects=1)
        if len(boxes) and labels[0] == 0:
            x0, y0, x1, y1 = boxes[0].astype(int)
            inside = img[y0:y1, x0:x1].reshape(-1, 3)
            assert (inside == inside[0]).all()
            break
    else:
        raise AssertionError("no lone rectangle drawn")
