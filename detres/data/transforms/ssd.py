"""SSD-style augmentations (Liu et al. 2016, Sec. 2.2; as ``torchvision.transforms.v2`` implements them),
the training recipe of RT-DETR: photometric distortion, zoom-out onto a larger canvas, IoU-constrained
random crop, and dropping degenerate boxes. Boxes are [N, 4] float32 absolute xyxy."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detres.data.transforms.base import DetData
from detres.registry import TRANSFORMS


def _box_iou_with(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """IoU of [N, 4] xyxy boxes with one [4] xyxy window -> [N]."""
    lt = np.maximum(boxes[:, :2], window[:2])
    rb = np.minimum(boxes[:, 2:], window[2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    win = float((window[2:] - window[:2]).prod())
    return inter / np.maximum(area + win - inter, 1e-12)


@TRANSFORMS.register()
class RandomPhotometricDistort:
    """Each with probability ``p``: brightness, contrast (before or after the colour changes, at random),
    saturation and hue factors drawn from their ranges, then a random channel permutation."""

    def __init__(self, brightness: Sequence[float] = (0.875, 1.125), contrast: Sequence[float] = (0.5, 1.5),
                 saturation: Sequence[float] = (0.5, 1.5), hue: Sequence[float] = (-0.05, 0.05), p: float = 0.5) -> None:
        self.brightness, self.contrast = tuple(map(float, brightness)), tuple(map(float, contrast))
        self.saturation, self.hue, self.p = tuple(map(float, saturation)), tuple(map(float, hue)), float(p)
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError(f"RandomPhotometricDistort.hue must lie in [-0.5, 0.5], got {hue}")

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        img = data.image.astype(np.float32)

        def contrast(x: np.ndarray) -> np.ndarray:
            f = rng.uniform(*self.contrast)
            mean = float(cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).mean())
            return (x - mean) * f + mean

        if rng.random() < self.p:
            img = img * rng.uniform(*self.brightness)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < self.p:
            img = contrast(img)
        if rng.random() < self.p:
            gray = cv2.cvtColor(np.clip(img, 0, 255).astype(np.float32), cv2.COLOR_RGB2GRAY)[..., None]
            img = (img - gray) * rng.uniform(*self.saturation) + gray
        if rng.random() < self.p:
            hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(rng.uniform(*self.hue) * 256))) % 256
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        if not contrast_first and rng.random() < self.p:
            img = contrast(img)
        if rng.random() < self.p:
            img = img[..., rng.permutation(3)]
        return DetData(np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8)), data.boxes, data.labels, data.iscrowd)

    def __repr__(self) -> str:
        return f"RandomPhotometricDistort(p={self.p})"


@TRANSFORMS.register()
class RandomZoomOut:
    """With probability ``p``, place the image at a random spot of a canvas ``r`` times its size
    (r uniform in ``side_range``) filled with ``fill``; boxes move with it (small-object training)."""

    def __init__(self, fill: int = 0, side_range: Sequence[float] = (1.0, 4.0), p: float = 0.5) -> None:
        lo, hi = map(float, side_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"RandomZoomOut.side_range must satisfy 1 <= low <= high, got {side_range}")
        self.fill, self.side_range, self.p = int(fill), (lo, hi), float(p)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        if rng.random() >= self.p:
            return data
        h, w = data.size
        r = rng.uniform(*self.side_range)
        ch, cw = int(h * r), int(w * r)
        top, left = int((ch - h) * rng.random()), int((cw - w) * rng.random())
        canvas = np.full((ch, cw, 3), self.fill, np.uint8)
        canvas[top:top + h, left:left + w] = data.image
        boxes = data.boxes + np.array([left, top, left, top], np.float32)
        return DetData(canvas, boxes, data.labels, data.iscrowd)

    def __repr__(self) -> str:
        return f"RandomZoomOut(side_range={self.side_range}, p={self.p})"


@TRANSFORMS.register()
class RandomIoUCrop:
    """With probability ``p``, SSD's crop: draw a minimum IoU from ``sampler_options`` (1.0 = keep the
    image), then up to ``trials`` windows of ``min_scale..max_scale`` of each side with an aspect ratio in
    ``[min_aspect_ratio, max_aspect_ratio]``; keep the first whose IoU with some box whose centre lies
    inside reaches it. Only boxes whose centre is inside are kept (clipped to the window). An image
    without boxes is left as it is."""

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0, sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                 trials: int = 40, p: float = 1.0) -> None:
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.min_ar, self.max_ar = float(min_aspect_ratio), float(max_aspect_ratio)
        self.options, self.trials, self.p = [float(o) for o in sampler_options], int(trials), float(p)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        if rng.random() >= self.p or len(data.boxes) == 0:
            return data
        h, w = data.size
        centres = (data.boxes[:, :2] + data.boxes[:, 2:]) / 2
        for _ in range(50):  # a bounded number of rounds (torchvision loops until it succeeds)
            min_iou = self.options[int(rng.integers(len(self.options)))]
            if min_iou >= 1.0:
                return data
            for _ in range(self.trials):
                r = self.min_scale + (self.max_scale - self.min_scale) * rng.random(2)
                nw, nh = int(w * r[0]), int(h * r[1])
                if nh == 0 or not self.min_ar <= nw / nh <= self.max_ar:
                    continue
                r = rng.random(2)
                left, top = int((w - nw) * r[0]), int((h - nh) * r[1])
                right, bottom = left + nw, top + nh
                if left == right or top == bottom:
                    continue
                inside = ((left < centres[:, 0]) & (centres[:, 0] < right)
                          & (top < centres[:, 1]) & (centres[:, 1] < bottom))
                if not inside.any():
                    continue
                window = np.array([left, top, right, bottom], np.float32)
                if _box_iou_with(data.boxes[inside], window).max() < min_iou:
                    continue
                kept = data.select(inside)
                boxes = kept.boxes - np.array([left, top, left, top], np.float32)
                np.clip(boxes[:, 0::2], 0, nw, out=boxes[:, 0::2])
                np.clip(boxes[:, 1::2], 0, nh, out=boxes[:, 1::2])
                image = np.ascontiguousarray(data.image[top:bottom, left:right])
                return DetData(image, boxes, kept.labels, kept.iscrowd)
        return data

    def __repr__(self) -> str:
        return f"RandomIoUCrop(scale=({self.min_scale}, {self.max_scale}), p={self.p})"


@TRANSFORMS.register()
class SanitizeBoxes:
    """Drop boxes whose width or height is below ``min_size`` pixels (after crops and resizes)."""

    def __init__(self, min_size: float = 1.0) -> None:
        self.min_size = float(min_size)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        wh = data.boxes[:, 2:] - data.boxes[:, :2]
        return data.select((wh >= self.min_size).all(1))

    def __repr__(self) -> str:
        return f"SanitizeBoxes(min_size={self.min_size})"
