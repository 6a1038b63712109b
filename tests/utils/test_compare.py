"""compare_detections: one-to-one matching within class."""
from __future__ import annotations

import torch

from detres.utils.compare import compare_detections

A = [0.0, 0.0, 10.0, 10.0]
B = [5.0, 5.0, 20.0, 20.0]


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}]


def test_duplicate_does_not_match_twice() -> None:
    c = compare_detections(_dets([A, A], [0.9, 0.9], [0, 0]), _dets([A, B], [0.9, 0.9], [0, 0]), label_offset=0)
    assert not c["identical"] and c["unmatched"] == 1
    # and the other way round
    c = compare_detections(_dets([A, B], [0.9, 0.9], [0, 0]), _dets([A, A], [0.9, 0.9], [0, 0]), label_offset=0)
    assert not c["identical"] and c["unmatched"] == 1


def test_permutations_are_identical() -> None:
    boxes, scores, labels = [A, B, A, B], [0.9, 0.8, 0.7, 0.6], [0, 0, 1, 2]
    ours = _dets(boxes, scores, labels)
    for perm in ([3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1]):
        ref = _dets([boxes[i] for i in perm], [scores[i] for i in perm], [labels[i] + 1 for i in perm])
        c = compare_detections(ours, ref)
        assert c["identical"] and c["unmatched"] == 0 and c["max_box_diff"] == 0.0, (perm, c)


def test_same_box_pairs_by_score() -> None:
    # Two detections on the same box of one class: the assignment must pair them by score, not by the
    # first box hit, or the score gate fails for both.
    ours = _dets([A, A], [0.9, 0.5], [0, 0])
    ref = _dets([A, A], [0.5 + 5e-5, 0.9], [0, 0])
    c = compare_detections(ours, ref, label_offset=0)
    assert c["identical"] and abs(c["max_score_diff"] - 5e-5) < 1e-6


def test_tolerances_labels_and_counts() -> None:
    ours = _dets([A, B], [0.9, 0.9], [0, 1])
    ref = _dets([[a + 1e-4 for a in B], A], [0.9, 0.9], [2, 1])
    c = compare_detections(ours, ref)
    assert c["identical"] and abs(c["max_box_diff"] - 1e-4) < 1e-6
    assert compare_detections(ours, ref, atol=5e-5)["unmatched"] == 1
    ref[0]["labels"] = torch.tensor([1, 1])  # B now has the wrong class
    assert compare_detections(ours, ref)["unmatched"] == 1
    c = compare_detections(ours, _dets([A], [0.9], [1]))
    assert not c["identical"] and c["unmatched"] == 1 and c["detections"] == [2]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    assert compare_detections(ours, empty)["unmatched"] == 2
    assert compare_detections(empty, empty)["identical"]
