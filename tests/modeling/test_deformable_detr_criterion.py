"""Deformable DETR's criterion and postprocess against the official numbers (../shared/fixtures/deformable_detr,
see its README), with no model: the fixture's raw outputs and targets go straight in.

Tolerances are the README's: losses |d| <= 1e-4 + 1e-5 |ref|; PostProcess scores 2e-5, boxes 5e-3 px,
labels exact, compared as sets (near-equal scores may swap places). Synthetic tests below need no fixture."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from detres.modeling.heads.deformable_detr import FocalSetCriterion
from detres.modeling.layers import FocalHungarianMatcher, assign, sigmoid_topk_detections
from detres.registry import LAYERS

LOSS_ATOL, LOSS_RTOL = 1e-4, 1e-5
SCORE_ATOL, BOX_ATOL_PX = 2e-5, 5e-3
VARIANTS = [("main", "single"), ("main", "batch"), ("plain", "single"), ("plain", "batch")]


@pytest.fixture(scope="module")
def fixture_a(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "fixtures" / "deformable_detr" / "fixture_A.pt"
    if not path.is_file():
        pytest.skip(f"Deformable DETR fixture not found: {path}")
    return torch.load(path, weights_only=True)


def _variant(fx: dict[str, Any], variant: str) -> dict[str, Any]:
    return fx if variant == "main" else fx["plain"]


def _criterion(root: dict[str, Any]) -> FocalSetCriterion:
    # The fixture's model: 91 classes, 3 decoder layers (2 auxiliary), official costs and weights.
    return FocalSetCriterion(num_classes=91, num_decoder_layers=3)


@pytest.mark.parametrize("variant,case", VARIANTS)
def test_matching_equals_official(fixture_a: dict[str, Any], variant: str, case: str) -> None:
    c = _variant(fixture_a, variant)[case]
    last = {k: c["outputs"][k] for k in ("pred_logits", "pred_boxes")}
    indices = FocalHungarianMatcher()(last, c["targets"])
    assert len(indices) == len(c["match_indices"])
    for (rows, cols), (ref_rows, ref_cols) in zip(indices, c["match_indices"]):
        assert rows.tolist() == ref_rows.tolist() and cols.tolist() == ref_cols.tolist()


@pytest.mark.parametrize("variant,case", VARIANTS)
def test_losses_equal_official(fixture_a: dict[str, Any], variant: str, case: str) -> None:
    root = _variant(fixture_a, variant)
    c = root[case]
    crit = _criterion(root)
    losses = crit(c["outputs"], c["targets"])
    ref = c["losses"]
    assert sorted(losses) == sorted(ref)
    for k, v in ref.items():
        d = (losses[k] - v).abs().item()
        assert d <= LOSS_ATOL + LOSS_RTOL * v.abs().item(), f"{k}: {losses[k].item()} vs official {v.item()}"
    assert crit.weight_dict == root["weight_dict"]
    total = sum(v for k, v in crit.weighted(losses).items() if k.startswith("loss_"))
    ref_total = sum(v * root["weight_dict"][k] for k, v in ref.items() if k in root["weight_dict"])
    assert abs(total.item() - ref_total.item()) <= LOSS_ATOL + LOSS_RTOL * abs(ref_total.item())


def _assert_same_detections(pred: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Equal as sets of (score, label, box) within the tolerances: near-equal scores may swap order."""
    assert pred["scores"].shape == ref["scores"].shape and pred["labels"].dtype == torch.int64
    assert (pred["scores"][:-1] >= pred["scores"][1:]).all(), "detections must be sorted by score"
    ok = ((pred["scores"][:, None] - ref["scores"][None]).abs() <= SCORE_ATOL) \
        & (pred["labels"][:, None] == ref["labels"][None]) \
        & ((pred["boxes"][:, None] - ref["boxes"][None]).abs().amax(-1) <= BOX_ATOL_PX)
    rows, cols = assign((~ok).float())
    assert ok[rows, cols].all(), f"{int((~ok[rows, cols]).sum())} detections have no official counterpart"
    # Only near-ties may change places.
    moved = rows != cols
    assert ((pred["scores"][rows[moved]] - pred["scores"][cols[moved]]).abs() <= 1e-4).all()


@pytest.mark.parametrize("variant,case", VARIANTS)
def test_postprocess_equals_official(fixture_a: dict[str, Any], variant: str, case: str) -> None:
    c = _variant(fixture_a, variant)[case]
    sizes = [(int(h), int(w)) for h, w in c["orig_sizes"].tolist()]
    dets = sigmoid_topk_detections(c["outputs"]["pred_logits"], c["outputs"]["pred_boxes"], sizes, k=100)
    assert len(dets) == len(c["postprocess"])
    for pred, ref in zip(dets, c["postprocess"]):
        _assert_same_detections(pred, ref)


# --- synthetic: no fixture -------------------------------------------------------------------------


def _outputs(b: int, q: int, k: int, n_aux: int = 2, s: int = 0, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)

    def layer(n: int) -> dict[str, torch.Tensor]:
        return {"pred_logits": torch.randn(b, n, k, generator=g).requires_grad_(),
                "pred_boxes": (torch.rand(b, n, 4, generator=g) * 0.4 + 0.3).requires_grad_()}

    out: dict[str, Any] = layer(q)
    out["aux_outputs"] = [layer(q) for _ in range(n_aux)]
    if s:
        out["enc_outputs"] = layer(s)
    return out


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]])},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]


def _leaves(out: dict[str, Any]) -> list[torch.Tensor]:
    layers = [out, *out["aux_outputs"]] + ([out["enc_outputs"]] if "enc_outputs" in out else [])
    return [t for d in layers for t in (d["pred_logits"], d["pred_boxes"])]


def test_gradients_reach_logits_and_boxes_of_every_layer() -> None:
    out = _outputs(2, 10, 5, s=30)
    crit = FocalSetCriterion(num_classes=5, num_decoder_layers=3)
    losses = crit(out, _targets())
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "cardinality_error_enc", "loss_ce_1"} <= set(losses)
    assert "class_error_0" not in losses and "class_error_enc" not in losses
    weighted = crit.weighted(losses)
    sum(v for k, v in weighted.items() if k.startswith("loss_")).backward()
    for t in _leaves(out):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert not weighted["class_error"].requires_grad and not weighted["cardinality_error"].requires_grad
    assert weighted["loss_giou_enc"].item() == pytest.approx(2.0 * losses["loss_giou_enc"].item())
    assert weighted["loss_bbox_1"].item() == pytest.approx(5.0 * losses["loss_bbox_1"].item())


def test_focal_loss_by_hand() -> None:
    # loss_ce = sum of focal terms / num_boxes (mean over Q, times Q), with the matched (query, class) positive.
    out = _outputs(2, 6, 3, n_aux=0, seed=1)
    crit = FocalSetCriterion(num_classes=3, focal_alpha=0.3, focal_gamma=1.5)
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2], [0.6, 0.5, 0.1, 0.3]])}]
    indices = crit.matcher(out, targets)
    positive = torch.zeros(2, 6, 3, dtype=torch.bool)
    for i, (rows, cols) in enumerate(indices):
        positive[i, rows, targets[i]["labels"][cols]] = True
    p = out["pred_logits"].detach().sigmoid()
    term = torch.where(positive, -0.3 * (1 - p) ** 1.5 * p.log(), -0.7 * p**1.5 * (1 - p).log())
    got = crit(out, targets)["loss_ce"]
    torch.testing.assert_close(got, term.sum() / 3, rtol=1e-5, atol=1e-6)


def test_empty_targets() -> None:
    out = _outputs(2, 8, 4, s=12)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)]
    losses = FocalSetCriterion(num_classes=4)(out, empty)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou_enc"].item() == 0
    assert losses["loss_ce"].item() > 0 and losses["class_error"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_ce"].backward()
    assert out["pred_logits"].grad.abs().sum() > 0


def test_nan_cost_and_bad_class_count_raise() -> None:
    out = _outputs(2, 6, 3, n_aux=0)
    out["pred_logits"] = out["pred_logits"].detach().clone()
    out["pred_logits"][0, 2, 1] = float("nan")
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]])}] * 2
    with pytest.raises(ValueError, match="NaN/inf"):
        FocalSetCriterion(num_classes=3)(out, targets)
    with pytest.raises(ValueError, match="num_classes=4"):
        FocalSetCriterion(num_classes=4)(_outputs(2, 6, 3, n_aux=0), targets)
    with pytest.raises(ValueError, match="image 0 has target labels outside 0..2"):
        FocalSetCriterion(num_classes=3)(_outputs(2, 6, 3, n_aux=0), _targets())


def test_weights_and_registry() -> None:
    crit = FocalSetCriterion(num_classes=3, ce_loss_coef=1.5, num_decoder_layers=2)
    assert crit.weight_dict == {"loss_ce": 1.5, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_ce_0": 1.5,
                                "loss_bbox_0": 5.0, "loss_giou_0": 2.0, "loss_ce_enc": 1.5,
                                "loss_bbox_enc": 5.0, "loss_giou_enc": 2.0}
    assert crit.weight_of("loss_ce_7") == 1.5 and crit.weight_of("cardinality_error_enc") == 0.0
    assert isinstance(crit.matcher, FocalHungarianMatcher) and crit.matcher.cost_class == 2.0
    assert LAYERS.get("FocalSetCriterion") is FocalSetCriterion
    assert LAYERS.get("FocalHungarianMatcher") is FocalHungarianMatcher
