"""DatasetMeta round trip and box sanitizing (NaN, degenerate, outside, clipped) with counted ids."""
from __future__ import annotations

import numpy as np
import pytest

from detres.data import BoxStats, DatasetMeta
from detres.data.base import sanitize_boxes


def test_meta_round_trip_and_mapping() -> None:
    m = DatasetMeta(["person", "car"], [1, 3])
    assert DatasetMeta.from_dict(m.to_dict()) == m
    assert m.label_of(3) == 1 and m.cat_id_of(0) == 1 and m.num_classes == 2
    with pytest.raises(KeyError, match="category id 2"):
        m.label_of(2)
    with pytest.raises(ValueError, match="duplicate"):
        DatasetMeta(["a", "b"], [1, 1])


def test_sanitize_counts_each_reason() -> None:
    boxes = np.array([[0, 0, 10, 10], [np.nan, 0, 5, 5], [5, 5, 3, 9], [-5, 2, 8, 12], [120, 0, 130, 5],
                      [4, 4, 4, 8]], np.float32)
    ids = np.arange(10, 16)
    stats = BoxStats()
    out, keep = sanitize_boxes(boxes, ids, height=50, width=100, stats=stats, where="x.jpg")
    assert keep.tolist() == [True, False, False, True, False, False]
    np.testing.assert_array_equal(out[3], [0, 2, 8, 12])
    assert stats.counts == {"dropped_non_finite": 1, "dropped_degenerate": 2, "clipped_to_image": 1,
                            "dropped_outside_image": 1}
    assert stats.examples["dropped_degenerate"] == ["12 (x.jpg)", "15 (x.jpg)"]
    assert "dropped_degenerate: 2" in stats.summary("ds")
