"""Transform properties: flip twice = identity, resize scales boxes, crops clip and drop, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from detres.data.transforms import (
    ColorJitter, Compose, DetData, LargeScaleJitter, RandomFlip, RandomSelect, RandomSizeCrop, Resize, ResizeShortestEdge,
    crop, hflip,
)


def _data(h: int = 60, w: int = 80) -> DetData:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 30, 25], [50, 40, 80, 60], [0, 0, 5, 5]], np.float32)
    return DetData(img, boxes, np.array([0, 1, 2]), np.array([False, True, False]))


def test_flip_twice_is_identity() -> None:
    d = _data()
    f = hflip(d)
    np.testing.assert_array_equal(f.boxes[0], [50, 5, 70, 25])  # x -> 80 - x
    np.testing.assert_array_equal(f.image[:, 0], d.image[:, -1])
    ff = hflip(f)
    np.testing.assert_array_equal(ff.image, d.image)
    np.testing.assert_array_equal(ff.boxes, d.boxes)
    always = RandomFlip(1.0)(d, np.random.default_rng(0))
    np.testing.assert_array_equal(always.boxes, f.boxes)


@pytest.mark.parametrize("short,max_size,expect", [(120, 1000, (120, 160)), (30, 1000, (30, 40)), (120, 100, (75, 100))])
def test_resize_scales_boxes(short: int, max_size: int, expect: tuple[int, int]) -> None:
    d = _data()
    r = ResizeShortestEdge([short], max_size)(d, np.random.default_rng(0))
    assert r.size == expect
    sx, sy = expect[1] / 80, expect[0] / 60
    np.testing.assert_allclose(r.boxes, d.boxes * [sx, sy, sx, sy], rtol=1e-6)
    np.testing.assert_array_equal(r.labels, d.labels)


def test_fixed_resize_ignores_aspect_ratio() -> None:
    d = _data()  # 60 x 80
    r = Resize([32, 48])(d, np.random.default_rng(0))
    assert r.size == (32, 48) and r.image.shape == (32, 48, 3)
    np.testing.assert_allclose(r.boxes, d.boxes * [48 / 80, 32 / 60, 48 / 80, 32 / 60], rtol=1e-6)
    with pytest.raises(ValueError, match="Resize.size"):
        Resize([32])


def test_resize_choice_and_range_draw_from_rng() -> None:
    d = _data()
    sizes = {ResizeShortestEdge([30, 45, 60], 1000)(d, np.random.default_rng(s)).size[0] for s in range(30)}
    assert sizes == {30, 45, 60}
    sizes = {ResizeShortestEdge([30, 60], 1000, "range")(d, np.random.default_rng(s)).size[0] for s in range(30)}
    assert min(sizes) >= 30 and max(sizes) <= 60 and len(sizes) > 5


def test_crop_clips_and_drops() -> None:
    d = _data()
    c = crop(d, top=10, left=20, height=40, width=40)
    assert c.size == (40, 40)
    # box 0 [10,5,30,25] -> [-10,-5,10,15] clipped to [0,0,10,15]; box 1 [50,40,80,60] -> [30,30,60,50] -> [30,30,40,40]
    # box 2 [0,0,5,5] lies left of the window: dropped with its label and crowd flag
    np.testing.assert_array_equal(c.boxes, [[0, 0, 10, 15], [30, 30, 40, 40]])
    np.testing.assert_array_equal(c.labels, [0, 1])
    np.testing.assert_array_equal(c.iscrowd, [False, True])
    np.testing.assert_array_equal(c.image, d.image[10:50, 20:60])


def test_random_size_crop_bounds() -> None:
    d = _data()
    t = RandomSizeCrop(20, 50)
    for s in range(20):
        c = t(d, np.random.default_rng(s))
        assert 20 <= c.size[0] <= 50 and 20 <= c.size[1] <= 50
        assert (c.boxes[:, 2] > c.boxes[:, 0]).all() and (c.boxes[:, 3] > c.boxes[:, 1]).all()
        assert (c.boxes >= 0).all() and (c.boxes[:, 2] <= c.size[1]).all() and (c.boxes[:, 3] <= c.size[0]).all()


def test_lsj_and_colour_and_select_are_deterministic() -> None:
    d = _data()
    t = Compose([RandomSelect([ResizeShortestEdge([40], 200)], [RandomSizeCrop(20, 40)]),
                 LargeScaleJitter(64, 0.5, 2.0), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomFlip()])
    a, b = t(d, np.random.default_rng(7)), t(d, np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert max(a.size) <= 64
    outs = {t(d, np.random.default_rng(s)).image.tobytes() for s in range(5)}
    assert len(outs) == 5
    cj = ColorJitter(0.5)(d, np.random.default_rng(0))
    np.testing.assert_array_equal(cj.boxes, d.boxes)
    assert cj.image.dtype == np.uint8 and not np.array_equal(cj.image, d.image)
