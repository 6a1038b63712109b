"""SSD-style augmentations (RT-DETR's recipe): boxes follow the image, stay inside it, and the
random choices come from the rng passed in."""
from __future__ import annotations

import numpy as np
import pytest

from detres.data.transforms import DetData, RandomIoUCrop, RandomPhotometricDistort, RandomZoomOut, SanitizeBoxes


def _data() -> DetData:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 30, 25], [40, 30, 75, 58], [2, 40, 12, 52]], np.float32)
    return DetData(image, boxes, np.array([0, 1, 2]), np.zeros(3, bool))


def test_photometric_distort_keeps_boxes_and_shape() -> None:
    d = _data()
    out = RandomPhotometricDistort(p=1.0)(d, np.random.default_rng(1))
    assert out.image.shape == d.image.shape and out.image.dtype == np.uint8
    assert not np.array_equal(out.image, d.image) and np.array_equal(out.boxes, d.boxes)
    same = RandomPhotometricDistort(p=0.0)(d, np.random.default_rng(1))
    assert np.array_equal(same.image, d.image)


def test_zoom_out_moves_boxes_with_the_image() -> None:
    d = _data()
    out = RandomZoomOut(fill=7, side_range=(2.0, 3.0), p=1.0)(d, np.random.default_rng(3))
    h, w = out.size
    assert 120 <= h <= 180 and 160 <= w <= 240
    shift = out.boxes[0, :2] - d.boxes[0, :2]
    left, top = int(shift[0]), int(shift[1])
    assert np.array_equal(out.image[top:top + 60, left:left + 80], d.image)
    assert np.allclose(out.boxes - d.boxes, np.array([left, top, left, top]))
    assert (out.image[:top] == 7).all() if top else True


@pytest.mark.parametrize("seed", range(8))
def test_iou_crop_keeps_boxes_inside_the_window(seed: int) -> None:
    d = _data()
    out = RandomIoUCrop(p=1.0)(d, np.random.default_rng(seed))
    h, w = out.size
    assert 0 < h <= 60 and 0 < w <= 80 and len(out.boxes) >= 1
    assert (out.boxes[:, 0::2] >= 0).all() and (out.boxes[:, 0::2] <= w).all()
    assert (out.boxes[:, 1::2] >= 0).all() and (out.boxes[:, 1::2] <= h).all()
    assert len(out.boxes) == len(out.labels) == len(out.iscrowd)


def test_iou_crop_leaves_an_image_without_boxes() -> None:
    d = _data().select(np.zeros(3, bool))
    assert RandomIoUCrop(p=1.0)(d, np.random.default_rng(0)) is d


def test_sanitize_drops_degenerate_boxes() -> None:
    d = _data()
    d = DetData(d.image, np.vstack([d.boxes, [[5, 5, 5.5, 20]]]).astype(np.float32), np.array([0, 1, 2, 0]),
                np.zeros(4, bool))
    out = SanitizeBoxes(min_size=1)(d, np.random.default_rng(0))
    assert len(out.boxes) == 3 and out.labels.tolist() == [0, 1, 2]
