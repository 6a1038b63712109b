"""Scoring backends on an empty result set: each backend scores it itself, and all agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detres.evaluation import backends
from detres.evaluation.coco_data import detections, ground_truth

CASES = ["06_torchmetrics_docstring_single_box/gt.json", "10_hotcoco_adversarial_fixtures/many_categories.json",
         "10_hotcoco_adversarial_fixtures/iscrowd_mixed.json", "10_hotcoco_adversarial_fixtures/no_gt_for_category.json"]


@pytest.mark.parametrize("case", CASES)
def test_empty_results_are_scored_by_faster_coco_eval_itself(shared_dir: Path, case: str, monkeypatch) -> None:
    pytest.importorskip("faster_coco_eval")
    pytest.importorskip("pycocotools")
    path = shared_dir / "data" / "coco_eval_cases" / case
    if not path.is_file():
        pytest.skip(f"COCO eval case not found: {path}")
    gt = ground_truth(path)
    dt = detections([], gt)
    used: list[bool] = []
    real = backends._reference
    monkeypatch.setattr(backends, "_reference", lambda *a, fast: used.append(fast) or real(*a, fast=fast))
    args = (gt, dt, [1, 10, 100], backends.DEFAULT_AREAS)
    fast, slow, ours = (backends.run_backend(b, *args) for b in ("faster_coco_eval", "pycocotools", "detres"))
    assert used == [True, False]  # no silent fallback to pycocotools
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(fast[key], slow[key]) and np.array_equal(ours[key], slow[key]), key
    has_gt = (slow["recall"] == 0).any()
    assert has_gt and set(np.unique(slow["precision"])) <= {-1.0, 0.0}
