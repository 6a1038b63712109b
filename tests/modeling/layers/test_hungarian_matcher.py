"""Hungarian matcher: optimal on small cost matrices (brute force), ties, empty / one / many targets."""
from __future__ import annotations

import itertools

import pytest
import torch

from detres.modeling.layers.hungarian_matcher import HungarianMatcher, assign


def brute_force_min_cost(cost: torch.Tensor) -> float:
    """Minimum total cost of a one-to-one assignment of min(Q, N) pairs, by enumeration."""
    q, n = cost.shape
    if q == 0 or n == 0:
        return 0.0
    if n <= q:
        return min(sum(cost[r, c].item() for c, r in enumerate(rows)) for rows in itertools.permutations(range(q), n))
    return min(sum(cost[r, c].item() for r, c in enumerate(cols)) for cols in itertools.permutations(range(n), q))


def _check_valid(rows: torch.Tensor, cols: torch.Tensor, q: int, n: int) -> None:
    assert len(rows) == len(cols) == min(q, n)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert all(0 <= r < q for r in rows.tolist()) and all(0 <= c < n for c in cols.tolist())


@pytest.mark.parametrize("q,n", [(1, 1), (3, 2), (4, 4), (5, 3), (2, 5), (6, 1), (3, 6)])
def test_assign_equals_brute_force(q: int, n: int) -> None:
    g = torch.Generator().manual_seed(q * 10 + n)
    for _ in range(5):
        cost = torch.randn(q, n, generator=g)
        rows, cols = assign(cost)
        _check_valid(rows, cols, q, n)
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min_cost(cost), abs=1e-6)


def test_assign_ties() -> None:
    # All-equal costs: any one-to-one assignment is optimal; it must still be one-to-one and complete.
    rows, cols = assign(torch.ones(4, 3))
    _check_valid(rows, cols, 4, 3)
    # Integer costs with many ties: the optimum total equals brute force.
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        cost = torch.randint(0, 3, (5, 4), generator=g).float()
        rows, cols = assign(cost)
        _check_valid(rows, cols, 5, 4)
        assert cost[rows, cols].sum().item() == brute_force_min_cost(cost)


def test_assign_empty_and_nonfinite() -> None:
    rows, cols = assign(torch.zeros(7, 0))
    assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64
    with pytest.raises(ValueError, match="NaN/inf"):
        assign(torch.tensor([[0.0, float("nan")]]))


def _outputs(b: int, q: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(b, q, k + 1, generator=g), "pred_boxes": torch.rand(b, q, 4, generator=g) * 0.5 + 0.25}


def test_matcher_empty_targets_and_one_target() -> None:
    out = _outputs(2, 6, 3)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3]])
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([2]), "boxes": boxes}]
    m = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    (r0, c0), (r1, c1) = m(out, targets)
    assert r0.numel() == 0 and c0.numel() == 0
    cost = m.cost_matrix(out["pred_logits"][1], out["pred_boxes"][1], targets[1]["labels"], boxes)
    assert c1.tolist() == [0] and r1.tolist() == [int(cost[:, 0].argmin())]


def test_matcher_perfect_prediction_is_chosen() -> None:
    out = _outputs(1, 5, 4, seed=1)
    tgt = torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.1]])
    out["pred_boxes"][0, 3] = tgt[0]
    out["pred_boxes"][0, 1] = tgt[1]
    out["pred_logits"][0, 3, 2] = 20.0
    out["pred_logits"][0, 1, 0] = 20.0
    (rows, cols), = HungarianMatcher()(out, [{"labels": torch.tensor([2, 0]), "boxes": tgt}])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 3, 1: 1}


def test_matcher_more_targets_than_queries() -> None:
    out = _outputs(1, 3, 2, seed=2)
    g = torch.Generator().manual_seed(3)
    tgt = torch.cat([torch.rand(5, 2, generator=g) * 0.5 + 0.25, torch.rand(5, 2, generator=g) * 0.2 + 0.05], 1)
    labels = torch.tensor([0, 1, 1, 0, 1])
    m = HungarianMatcher()
    (rows, cols), = m(out, [{"labels": labels, "boxes": tgt}])
    _check_valid(rows, cols, 3, 5)
    cost = m.cost_matrix(out["pred_logits"][0], out["pred_boxes"][0], labels, tgt)
    assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min_cost(cost), abs=1e-5)


def test_matcher_cost_formula() -> None:
    out = _outputs(1, 2, 2, seed=4)
    tgt = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    m = HungarianMatcher(cost_class=2.0, cost_bbox=3.0, cost_giou=0.5)
    cost = m.cost_matrix(out["pred_logits"][0], out["pred_boxes"][0], torch.tensor([1]), tgt)
    p = out["pred_logits"][0].softmax(-1)[:, 1]
    l1 = (out["pred_boxes"][0] - tgt).abs().sum(-1)
    from torchvision.ops import generalized_box_iou

    from detres.structures.boxes import cxcywh_to_xyxy

    giou = generalized_box_iou(cxcywh_to_xyxy(out["pred_boxes"][0]), cxcywh_to_xyxy(tgt))[:, 0]
    torch.testing.assert_close(cost[:, 0], -2.0 * p + 3.0 * l1 - 0.5 * giou)


def test_focal_matcher_cost_formula() -> None:
    from torchvision.ops import generalized_box_iou

    from detres.modeling.layers.hungarian_matcher import FocalHungarianMatcher
    from detres.structures.boxes import cxcywh_to_xyxy

    g = torch.Generator().manual_seed(5)
    logits, boxes = torch.randn(4, 3, generator=g) * 3, torch.rand(4, 4, generator=g) * 0.4 + 0.3
    tgt, labels = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.1]]), torch.tensor([2, 0])
    m = FocalHungarianMatcher(cost_class=1.5, cost_bbox=3.0, cost_giou=0.5, alpha=0.3, gamma=1.5)
    cost = m.cost_matrix(logits, boxes, labels, tgt)
    p = logits.sigmoid()[:, labels]
    focal = 0.3 * (1 - p) ** 1.5 * -torch.log(p + 1e-8) - 0.7 * p**1.5 * -torch.log(1 - p + 1e-8)
    l1 = (boxes[:, None] - tgt[None]).abs().sum(-1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt))
    torch.testing.assert_close(cost, 1.5 * focal + 3.0 * l1 - 0.5 * giou)
    # The official defaults: class 2, L1 5, GIoU 2, alpha 0.25, gamma 2.
    d = FocalHungarianMatcher()
    assert (d.cost_class, d.cost_bbox, d.cost_giou, d.alpha, d.gamma) == (2.0, 5.0, 2.0, 0.25, 2.0)


def test_focal_matcher_picks_confident_query_and_handles_empty() -> None:
    from detres.modeling.layers.hungarian_matcher import FocalHungarianMatcher

    g = torch.Generator().manual_seed(6)
    out = {"pred_logits": torch.randn(2, 5, 4, generator=g) - 3.0, "pred_boxes": torch.full((2, 5, 4), 0.5)}
    out["pred_logits"][1, 3, 2] = 8.0  # equal boxes everywhere: only the class cost decides
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]])}]
    (r0, c0), (r1, c1) = FocalHungarianMatcher()(out, targets)
    assert r0.numel() == 0 and c0.numel() == 0 and r1.tolist() == [3] and c1.tolist() == [0]
    with pytest.raises(ValueError, match="FocalHungarianMatcher: all costs are 0"):
        FocalHungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
