"""Synthetic shapes: a COCO-format detection dataset of coloured shapes on textured backgrounds.

Class k is a shape type (rectangle, ellipse, triangle, cross, diamond) with its own hue band, so a
small CPU detector learns it in minutes. Objects are small / medium / large in COCO's sense
(max side ~8-28, 32-90 and 96+ px), may overlap (IoU <= 0.4), and ~5% of images are empty. Every
image is a pure function of (seed, split, index).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SHAPE_CLASSES = ["rectangle", "ellipse", "triangle", "cross", "diamond"]
IMAGE_SIZES = (256, 288, 320)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted low-frequency colour noise with a linear gradient, plus fine grain: [h, w, 3] uint8."""
    cells = int(rng.integers(3, 12))
    low = rng.uniform(60, 190, size=(cells, cells, 3)).astype(np.float32)
    gy, gx = rng.uniform(-40, 40, size=2)
    low += (np.linspace(0, gy, cells, dtype=np.float32)[:, None, None]
            + np.linspace(0, gx, cells, dtype=np.float32)[None, :, None])
    img = cv2.resize(np.clip(low, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    grain = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w) & 31
    img = cv2.add(img, cv2.cvtColor(grain, cv2.COLOR_GRAY2RGB))
    return cv2.subtract(img, (16, 16, 16, 0))


def _colour(rng: np.random.Generator, label: int, num_classes: int) -> tuple[int, int, int]:
    hue = (label * 180 // num_classes + int(rng.integers(-8, 9))) % 180
    hsv = np.array([[[hue, int(rng.integers(150, 256)), int(rng.integers(140, 256))]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _draw(img: np.ndarray, label: int, x0: int, y0: int, bw: int, bh: int, colour: tuple[int, int, int]) -> None:
    """Draw shape ``label`` filling the pixel box [x0, x0 + bw) x [y0, y0 + bh)."""
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    cx, cy = x0 + bw // 2, y0 + bh // 2
    name = SHAPE_CLASSES[label]
    if name == "rectangle":
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
    elif name == "ellipse":
        # odd extents so that centre +- axes hits both edges exactly
        cv2.ellipse(img, (x0 + (bw - 1) // 2, y0 + (bh - 1) // 2), ((bw - 1) // 2, (bh - 1) // 2), 0, 0, 360, colour, -1)
    elif name == "triangle":
        cv2.fillPoly(img, [np.array([[cx, y0], [x1, y1], [x0, y1]], np.int32)], colour)
    elif name == "cross":
        tw, th = max(1, bw // 3), max(1, bh // 3)
        cv2.rectangle(img, (x0, cy - th // 2), (x1, cy - th // 2 + th - 1), colour, -1)
        cv2.rectangle(img, (cx - tw // 2, y0), (cx - tw // 2 + tw - 1, y1), colour, -1)
    else:  # diamond
        cv2.fillPoly(img, [np.array([[cx, y0], [x1, cy], [cx, y1], [x0, cy]], np.int32)], colour)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``a`` [4] with boxes ``b`` [M, 4]."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def make_image(rng: np.random.Generator, num_classes: int = 3, max_objects: int = 8,
               empty_prob: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: ([H, W, 3] uint8 RGB, boxes [N, 4] float32 xyxy tight around the drawn pixels, labels [N])."""
    h, w = (int(v) for v in rng.choice(IMAGE_SIZES, size=2))
    img = _background(rng, h, w)
    n = 0 if rng.random() < empty_prob else int(rng.integers(1, max_objects + 1))
    boxes: list[list[int]] = []
    labels: list[int] = []
    colours: list[tuple[int, int, int]] = []
    for _ in range(n):
        label = int(rng.integers(num_classes))
        kind = rng.choice(3, p=[0.35, 0.4, 0.25])
        lo, hi = [(8, 28), (32, 90), (96, int(0.75 * min(h, w)))][kind]
        for _try in range(20):
            side = int(rng.integers(lo, hi + 1))
            aspect = float(np.exp(rng.uniform(-0.5, 0.5)))
            bw = max(6, min(w - 1, int(round(side * min(1.0, aspect)))))
            bh = max(6, min(h - 1, int(round(side * min(1.0, 1 / aspect)))))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = np.array([x0, y0, x0 + bw, y0 + bh], np.float32)
            if not boxes or _iou(box, np.array(boxes, np.float32)).max() <= 0.4:
                break
        else:
            continue
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        labels.append(label)
        colours.append(_colour(rng, label, num_classes))
    # Large shapes first, so a small shape inside a large one stays visible.
    order = sorted(range(len(boxes)), key=lambda j: -(boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1]))
    boxes, labels = [boxes[j] for j in order], [labels[j] for j in order]
    for b, lab, j in zip(boxes, labels, order):
        _draw(img, lab, b[0], b[1], b[2] - b[0], b[3] - b[1], colours[j])
    return img, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _render(job: tuple[Path, str, int, int, int, int]) -> tuple[int, int, list[list[float]], list[int]]:
    """Draw and write image ``i`` of a split; returns (h, w, boxes xyxy, labels)."""
    img_dir, split, i, seed, num_classes, quality = job
    img, boxes, labels = make_image(np.random.default_rng([seed, _SPLIT_CODE.get(split, 3), i]), num_classes)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "JPEG encoding failed"
    (img_dir / f"{i + 1:06d}.jpg").write_bytes(buf.tobytes())
    return img.shape[0], img.shape[1], boxes.tolist(), labels.tolist()


def make_split(out: Path, split: str, num_images: int, seed: int = 0, num_classes: int = 3,
               quality: int = 90, workers: int = 1) -> dict[str, Any]:
    """Write ``out/<split>/*.jpg`` and return the split's COCO json dict (category ids 1..K).
    ``workers`` > 1 renders in a process pool; the output does not depend on it."""
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes}")
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(img_dir, split, i, seed, num_classes, quality) for i in range(num_images)]
    if workers > 1 and num_images > 64:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_render, jobs, chunksize=32)
    else:
        results = [_render(j) for j in jobs]
    images, anns = [], []
    for i, (h, w, boxes, labels) in enumerate(results):
        images.append({"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "height": h, "width": w})
        for b, lab in zip(boxes, labels):
            bw, bh = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": lab + 1,
                         "bbox": [int(b[0]), int(b[1]), int(bw), int(bh)], "area": int(bw * bh), "iscrowd": 0})
    cats = [{"id": k + 1, "name": SHAPE_CLASSES[k], "supercategory": "shape"} for k in range(num_classes)]
    return {"info": {"description": f"detres synthetic shapes, seed {seed}, split {split}"},
            "images": images, "annotations": anns, "categories": cats}


def make_shapes(out: str | Path, num_train: int, num_val: int, seed: int = 0, num_classes: int = 3,
                workers: int = 1) -> dict[str, Path]:
    """Write the dataset: ``out/{train,val}/*.jpg``, ``out/annotations/instances_{train,val}.json``."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", num_train), ("val", num_val)):
        data = make_split(out, split, n, seed, num_classes, workers=workers)
        paths[split] = out / "annotations" / f"instances_{split}.json"
        paths[split].write_text(json.dumps(data))
    return paths
