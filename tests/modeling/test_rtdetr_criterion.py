"""RT-DETR's criterion and postprocess against the official RT-DETRv2 numbers (../shared/fixtures/rtdetrv2,
see its README), with no model: the fixture's raw outputs and targets go straight in.

Tolerances are the README's: losses 1e-5 relative (+ 1e-6 absolute), Hungarian indices and labels exact;
postprocess scores 1e-5, boxes 5e-3 px. Synthetic tests below need no fixture."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS
from detres.modeling.heads.rtdetr import RTDETRCriterion
from detres.modeling.layers import (
    FocalHungarianMatcher, assign, denoising_indices, sigmoid_topk_detections, varifocal_loss,
)
from detres.registry import LAYERS

LOSS_ATOL, LOSS_RTOL = 1e-6, 1e-5
SCORE_ATOL, BOX_ATOL_PX = 1e-5, 5e-3
# (model, image case, target set): r18 single / batch / batch with an image without objects, r50 single.
CASES = [("r18", "single", "single"), ("r18", "batch", "batch"), ("r18", "batch", "batch_zero"),
         ("r50", "single", "single")]
POST_CASES = [("r18", "single"), ("r18", "batch"), ("r50", "single")]


@pytest.fixture(scope="module")
def fixture_a(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "fixtures" / "rtdetrv2" / "fixture_A.pt"
    if not path.is_file():
        pytest.skip(f"RT-DETRv2 fixture not found: {path}")
    return torch.load(path, weights_only=True)


def _root(fx: dict[str, Any], model: str) -> dict[str, Any]:
    return fx if model == "r18" else fx["r50"]


def _layers(outputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The fixture's ``match_indices`` keys -> that layer's outputs."""
    out = {"final": outputs}
    out.update({f"aux_{i}": a for i, a in enumerate(outputs["aux_outputs"])})
    out.update({f"enc_{i}": e for i, e in enumerate(outputs["enc_aux_outputs"])})
    return out


@pytest.mark.parametrize("model,case,target_set", CASES)
def test_matching_equals_official(fixture_a: dict[str, Any], model: str, case: str, target_set: str) -> None:
    c = _root(fixture_a, model)[case]
    ref = c["losses"][target_set]
    layers = _layers(c["outputs"])
    assert sorted(layers) == sorted(ref["match_indices"])
    matcher = RTDETRCriterion(num_classes=80).matcher
    for name, layer in layers.items():
        indices = matcher(layer, ref["targets"])
        assert len(indices) == len(ref["match_indices"][name])
        for (rows, cols), (ref_rows, ref_cols) in zip(indices, ref["match_indices"][name]):
            assert rows.tolist() == ref_rows.tolist() and cols.tolist() == ref_cols.tolist(), name


@pytest.mark.parametrize("model,case,target_set", CASES)
def test_losses_equal_official(fixture_a: dict[str, Any], model: str, case: str, target_set: str) -> None:
    root = _root(fixture_a, model)
    c = root[case]
    ref = c["losses"][target_set]["loss_dict"]  # already multiplied by the weight dict
    crit = RTDETRCriterion(num_classes=80)
    losses = crit(c["outputs"], c["losses"][target_set]["targets"])
    weighted = crit.weighted(losses)
    assert sorted(k for k in weighted if k.startswith("loss_")) == sorted(ref)
    assert set(weighted) - set(ref) == {"class_error"}
    for k, v in ref.items():
        d = (weighted[k] - v).abs().item()
        assert d <= LOSS_ATOL + LOSS_RTOL * v.abs().item(), f"{k}: {weighted[k].item()} vs official {v.item()}"
        # forward is unweighted: weighing it by the official dict gives the official value
        assert torch.allclose(losses[k] * root["weight_dict"][k.split("_aux_")[0].split("_enc_")[0]], weighted[k])
    assert crit.weight_dict == root["weight_dict"]


def _assert_same_detections(pred: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Equal as sets of (score, label, box) within the tolerances: near-equal scores may swap order."""
    assert pred["scores"].shape == ref["scores"].shape == (300,) and pred["labels"].dtype == torch.int64
    assert (pred["scores"][:-1] >= pred["scores"][1:]).all(), "detections must be sorted by score"
    ok = ((pred["scores"][:, None] - ref["scores"][None]).abs() <= SCORE_ATOL) \
        & (pred["labels"][:, None] == ref["labels_80"][None]) \
        & ((pred["boxes"][:, None] - ref["boxes"][None]).abs().amax(-1) <= BOX_ATOL_PX)
    rows, cols = assign((~ok).float())
    assert ok[rows, cols].all(), f"{int((~ok[rows, cols]).sum())} detections have no official counterpart"
    moved = rows != cols
    assert ((pred["scores"][rows[moved]] - pred["scores"][cols[moved]]).abs() <= 1e-5).all()


@pytest.mark.parametrize("model,case", POST_CASES)
def test_postprocess_equals_official(fixture_a: dict[str, Any], model: str, case: str) -> None:
    c = _root(fixture_a, model)[case]
    # orig_target_sizes is (w, h) as the official CocoDetection builds it; detres sizes are (h, w).
    sizes = [(int(h), int(w)) for w, h in c["orig_target_sizes"].tolist()]
    dets = sigmoid_topk_detections(c["outputs"]["pred_logits"], c["outputs"]["pred_boxes"], sizes, k=300)
    assert len(dets) == len(c["postprocessed"])
    cat_ids = torch.tensor(COCO_CATEGORY_IDS)
    for pred, ref in zip(dets, c["postprocessed"]):
        _assert_same_detections(pred, ref)
        # labels stay 0..79 in the model; the evaluator's 80 -> COCO id table is the official remap
        assert cat_ids[ref["labels_80"]].tolist() == ref["labels"].tolist()
        assert (pred["labels"] < 80).all()


# --- synthetic: no fixture -------------------------------------------------------------------------


def _outputs(b: int, q: int, k: int, n_aux: int = 2, n_enc: int = 1, dn: int = 0, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)

    def layer(n: int, cols: int = k) -> dict[str, torch.Tensor]:
        return {"pred_logits": torch.randn(b, n, cols, generator=g).requires_grad_(),
                "pred_boxes": (torch.rand(b, n, 4, generator=g) * 0.4 + 0.3).requires_grad_()}

    out: dict[str, Any] = layer(q)
    out["aux_outputs"] = [layer(q) for _ in range(n_aux)]
    out["enc_aux_outputs"] = [layer(q) for _ in range(n_enc)]
    out["enc_meta"] = {"class_agnostic": False}
    if dn:
        out["dn_aux_outputs"] = [layer(dn) for _ in range(n_aux + 1)]
    return out


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]])},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]


def _leaves(out: dict[str, Any]) -> list[torch.Tensor]:
    layers = [out, *out["aux_outputs"], *out["enc_aux_outputs"], *out.get("dn_aux_outputs", [])]
    return [t for d in layers for t in (d["pred_logits"], d["pred_boxes"])]


def test_varifocal_loss_by_hand() -> None:
    # positives: BCE against q weighted by q; negatives: -alpha p^gamma log(1 - p).
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, generator=g)
    positive = torch.zeros(4, 5, dtype=torch.bool)
    positive[0, 1] = positive[2, 4] = positive[3, 0] = True
    q = torch.where(positive, torch.rand(4, 5, generator=g), torch.zeros(()))
    p = logits.sigmoid()
    expect = torch.where(positive, -q * (q * p.log() + (1 - q) * (1 - p).log()), -0.6 * p**1.5 * (1 - p).log())
    torch.testing.assert_close(varifocal_loss(logits, q, positive, alpha=0.6, gamma=1.5), expect)


def test_vfl_target_is_the_matched_iou() -> None:
    # A matched query whose box equals its target has IoU 1: its positive term is -log p.
    out = _outputs(1, 4, 3, n_aux=0, n_enc=0, seed=2)
    target = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    crit = RTDETRCriterion(num_classes=3)
    with torch.no_grad():
        out["pred_boxes"][0, 1] = target[0]["boxes"][0]
        out["pred_logits"][0, 1, 2] = 8.0
    (rows, _), = crit.matcher(out, target)
    assert rows.tolist() == [1]
    p = out["pred_logits"].detach().sigmoid()[0]
    neg = -0.75 * p**2 * (1 - p).log()
    neg[1, 2] = -p[1, 2].log()
    got = crit(out, target)["loss_vfl"]
    # mean over the 4 queries, summed, times Q / num_boxes = 4 / 1: the plain sum
    torch.testing.assert_close(got, neg.sum(), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_layer() -> None:
    groups, dn = 3, 12  # 2 positives + 2 negatives per group
    out = _outputs(2, 10, 5, dn=dn)
    out["dn_meta"] = {"dn_num_group": groups, "dn_num_split": [dn, 10]}
    crit = RTDETRCriterion(num_classes=5)
    losses = crit(out, _targets())
    expect = {"loss_vfl", "loss_bbox", "loss_giou", "class_error"}
    for s in ["aux_0", "aux_1", "enc_0", "dn_0", "dn_1", "dn_2"]:
        expect |= {f"loss_vfl_{s}", f"loss_bbox_{s}", f"loss_giou_{s}"}
    assert set(losses) == expect
    weighted = crit.weighted(losses)
    sum(v for k, v in weighted.items() if k.startswith("loss_")).backward()
    for t in _leaves(out):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert not weighted["class_error"].requires_grad
    assert weighted["loss_giou_dn_2"].item() == pytest.approx(2.0 * losses["loss_giou_dn_2"].item())
    assert weighted["loss_bbox_enc_0"].item() == pytest.approx(5.0 * losses["loss_bbox_enc_0"].item())


def _official_positive_idx(num_gts: list[int], groups: int) -> list[torch.Tensor]:
    """The official rule: positives are the first max_gt of each 2 * max_gt block, where the image has a box."""
    most = max(num_gts)
    mask = torch.zeros(len(num_gts), 2 * most)
    for i, n in enumerate(num_gts):
        mask[i, :n] = 1
    pos = torch.nonzero(mask.repeat(1, groups))[:, 1]
    return list(torch.split(pos, [n * groups for n in num_gts]))


def test_denoising_indices_follow_the_official_layout() -> None:
    targets = [{"labels": torch.arange(n), "boxes": torch.rand(n, 4)} for n in (3, 0, 1)]
    groups = 4
    meta = {"dn_num_group": groups, "dn_num_split": [2 * 3 * groups, 300]}
    got_groups, indices = RTDETRCriterion.dn_indices({"dn_meta": meta}, targets)
    assert got_groups == groups
    for (q, t), ref, tgt in zip(indices, _official_positive_idx([3, 0, 1], groups), targets):
        assert q.tolist() == ref.tolist()
        assert t.tolist() == torch.arange(len(tgt["labels"])).repeat(groups).tolist()
    assert [(q.tolist(), t.tolist()) for q, t in indices] == \
        [(q.tolist(), t.tolist()) for q, t in denoising_indices(targets, groups, 2 * 3 * groups)]


def test_denoising_terms_use_fixed_pairs_and_group_normalizer() -> None:
    targets = _targets()
    groups, dn = 2, 8
    out = _outputs(2, 6, 5, n_aux=0, n_enc=0, dn=dn, seed=4)
    out["dn_meta"] = {"dn_num_group": groups, "dn_num_split": [dn, 6]}
    with torch.no_grad():  # positive denoising queries predict their boxes exactly: L1 and GIoU are 0
        for g in range(groups):
            out["dn_aux_outputs"][0]["pred_boxes"][0, g * 4: g * 4 + 2] = targets[0]["boxes"]
    crit = RTDETRCriterion(num_classes=5)
    losses = crit(out, targets)
    assert losses["loss_bbox_dn_0"].item() == 0 and abs(losses["loss_giou_dn_0"].item()) < 1e-6
    # loss_vfl_dn: the fixed pairs, normalized by num_boxes (2) times the groups
    _, indices = crit.dn_indices(out, targets)
    ref = crit._losses(out["dn_aux_outputs"][0], targets, 2.0 * groups, log=False, indices=indices)
    torch.testing.assert_close(losses["loss_vfl_dn_0"], ref["loss_vfl"])
    del out["dn_meta"]
    with pytest.raises(KeyError, match="dn_meta"):
        crit(out, targets)
    out["dn_meta"] = {"dn_num_group": 4, "dn_num_split": [dn, 6]}  # 2 queries per group < 2 + 2
    with pytest.raises(ValueError, match="cannot hold 2 positive"):
        crit(out, targets)


def test_empty_targets() -> None:
    out = _outputs(2, 8, 4, dn=2)
    out["dn_meta"] = {"dn_num_group": 1, "dn_num_split": [2, 8]}  # the official dummy group of an empty batch
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)]
    losses = RTDETRCriterion(num_classes=4)(out, empty)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou_enc_0"].item() == 0
    assert losses["loss_bbox_dn_1"].item() == 0
    assert losses["loss_vfl"].item() > 0 and losses["loss_vfl_dn_0"].item() > 0 and losses["class_error"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_vfl"].backward()
    assert out["pred_logits"].grad.abs().sum() > 0


def test_class_agnostic_encoder_and_errors() -> None:
    out = _outputs(2, 6, 5, n_aux=0, n_enc=0)
    g = torch.Generator().manual_seed(5)
    out["enc_aux_outputs"] = [{"pred_logits": torch.randn(2, 6, 1, generator=g),
                               "pred_boxes": torch.rand(2, 6, 4, generator=g) * 0.4 + 0.3}]
    out["enc_meta"] = {"class_agnostic": True}
    losses = RTDETRCriterion(num_classes=5)(out, _targets())
    assert torch.isfinite(losses["loss_vfl_enc_0"]) and losses["loss_giou_enc_0"].item() > 0
    with pytest.raises(ValueError, match="num_classes=4"):
        RTDETRCriterion(num_classes=4)(_outputs(2, 6, 5, n_aux=0), _targets())
    with pytest.raises(ValueError, match="image 0 has target labels outside 0..2"):
        RTDETRCriterion(num_classes=3)(_outputs(2, 6, 3, n_aux=0), _targets())


def test_weights_and_registry() -> None:
    crit = RTDETRCriterion(num_classes=3, vfl_loss_coef=1.5)
    assert crit.weight_dict == {"loss_vfl": 1.5, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert crit.weight_of("loss_vfl_dn_4") == 1.5 and crit.weight_of("loss_giou_aux_3") == 2.0
    assert crit.weight_of("class_error") == 0.0
    m = crit.matcher
    assert isinstance(m, FocalHungarianMatcher)
    assert (m.cost_class, m.cost_bbox, m.cost_giou, m.alpha, m.gamma) == (2.0, 5.0, 2.0, 0.25, 2.0)
    assert (crit.vfl_alpha, crit.vfl_gamma) == (0.75, 2.0)
    assert LAYERS.get("RTDETRCriterion") is RTDETRCriterion
