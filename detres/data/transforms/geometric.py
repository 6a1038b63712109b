"""Geometric transforms (OpenCV); boxes move with the image. Boxes are [N, 4] float32 absolute xyxy."""
from __future__ import annotations

import cv2
import numpy as np

from detres.data.transforms.base import DetData
from detres.registry import TRANSFORMS


def resize(data: DetData, new_h: int, new_w: int) -> DetData:
    """Resize the image to (new_h, new_w) (bilinear; area when shrinking a lot) and scale the boxes."""
    h, w = data.size
    if (new_h, new_w) == (h, w):
        return data
    interp = cv2.INTER_AREA if new_h * new_w < 0.25 * h * w else cv2.INTER_LINEAR
    image = cv2.resize(data.image, (new_w, new_h), interpolation=interp)
    scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
    return DetData(image, data.boxes * scale, data.labels, data.iscrowd)


def crop(data: DetData, top: int, left: int, height: int, width: int) -> DetData:
    """Crop the window (top, left, height, width); boxes are shifted and clipped, and boxes left
    with no area are dropped (DETR's ``crop``, Carion et al. 2020)."""
    image = data.image[top:top + height, left:left + width]
    boxes = data.boxes - np.array([left, top, left, top], np.float32)
    np.clip(boxes[:, 0::2], 0, image.shape[1], out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, image.shape[0], out=boxes[:, 1::2])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return DetData(image, boxes[keep], data.labels[keep], data.iscrowd[keep])


def hflip(data: DetData) -> DetData:
    """Mirror left-right: x -> w - x."""
    w = data.size[1]
    boxes = data.boxes.copy()
    boxes[:, 0] = w - data.boxes[:, 2]
    boxes[:, 2] = w - data.boxes[:, 0]
    return DetData(cv2.flip(data.image, 1), boxes, data.labels, data.iscrowd)


def shortest_edge_size(h: int, w: int, short: float, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side ``short`` and the long side at most ``max_size``."""
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


@TRANSFORMS.register()
class ResizeShortestEdge:
    """Resize so the short side is one of ``short_edge`` ("choice") or uniform in its [min, max]
    ("range"), capping the long side at ``max_size`` (0: no cap)."""

    def __init__(self, short_edge: list[int] | int, max_size: int = 1333, sample_style: str = "choice") -> None:
        self.short_edge = [int(short_edge)] if isinstance(short_edge, int) else [int(s) for s in short_edge]
        if sample_style not in ("choice", "range"):
            raise ValueError(f"ResizeShortestEdge.sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(self.short_edge) != 2:
            raise ValueError(f"ResizeShortestEdge: sample_style 'range' needs short_edge [min, max], got {self.short_edge}")
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        if self.sample_style == "range":
            short = int(rng.integers(self.short_edge[0], self.short_edge[1] + 1))
        elif len(self.short_edge) == 1:
            short = self.short_edge[0]
        else:
            short = self.short_edge[int(rng.integers(len(self.short_edge)))]
        return resize(data, *shortest_edge_size(*data.size, short, self.max_size))

    def __repr__(self) -> str:
        return f"ResizeShortestEdge({self.short_edge}, max_size={self.max_size}, {self.sample_style})"


@TRANSFORMS.register()
class Resize:
    """Resize to exactly ``size`` [H, W], aspect ratio not kept (RT-DETR's training ``Resize(640, 640)``,
    matching the model's ``input.fixed_size_test``)."""

    def __init__(self, size: list[int]) -> None:
        if len(size) != 2 or min(int(v) for v in size) <= 0:
            raise ValueError(f"Resize.size must be [H, W] with positive sizes, got {size}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        return resize(data, *self.size)

    def __repr__(self) -> str:
        return f"Resize({list(self.size)})"


@TRANSFORMS.register()
class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = float(prob)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        return hflip(data) if rng.random() < self.prob else data

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


@TRANSFORMS.register()
class RandomSizeCrop:
    """DETR's random crop: width and height uniform in [min_size, min(image side, max_size)],
    position uniform; boxes clipped, boxes left empty dropped."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = int(min_size), int(max_size)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        h, w = data.size
        cw = int(rng.integers(min(self.min_size, w), min(w, self.max_size) + 1))
        ch = int(rng.integers(min(self.min_size, h), min(h, self.max_size) + 1))
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return crop(data, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size})"


@TRANSFORMS.register()
class LargeScaleJitter:
    """Large-scale jitter (Ghiasi et al. 2021): rescale so the image fits an
    ``output_size * s`` square, s ~ U[min_scale, max_scale], then randomly crop to at most
    ``output_size`` x ``output_size``. Padding is left to the detector's ``preprocess``."""

    def __init__(self, output_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0) -> None:
        self.output_size, self.min_scale, self.max_scale = int(output_size), float(min_scale), float(max_scale)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        h, w = data.size
        target = self.output_size * rng.uniform(self.min_scale, self.max_scale)
        scale = target / max(h, w)
        data = resize(data, max(1, int(round(h * scale))), max(1, int(round(w * scale))))
        h, w = data.size
        ch, cw = min(h, self.output_size), min(w, self.output_size)
        if (ch, cw) == (h, w):
            return data
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return crop(data, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"LargeScaleJitter({self.output_size}, {self.min_scale}, {self.max_scale})"
