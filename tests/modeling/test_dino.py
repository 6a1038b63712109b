"""DINO with tiny random weights: contrastive denoising (attention mask, noise scales, label flips,
losses present in training and absent at inference), mixed query selection with given indices,
look-forward-twice gradients, shapes."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import detres
from detres.modeling.heads.dino import ContrastiveDenoising, DINOCriterion, denoising_attn_mask
from detres.structures.boxes import cxcywh_to_xyxy


def tiny_dino(num_classes: int = 3, **head: Any) -> torch.nn.Module:
    """ResNet-18 (res4, res5) + ChannelMapper(64, GN, +1 level) + a 1+2-layer DINO head, 12 queries."""
    torch.manual_seed(0)
    node = {
        "_target_": "DINO",
        "input": {"min_size_test": 0, "size_divisibility": 1},
        "backbone": {"_target_": "ResNet", "depth": 18, "norm": "frozen_bn", "freeze_at": 1, "out_features": ["res4", "res5"]},
        "neck": {"_target_": "ChannelMapper", "in_features": ["res4", "res5"], "out_channels": 64, "norm": "gn",
                 "num_extra_levels": 1},
        "head": {"_target_": "DINOHead", "num_classes": num_classes, "num_queries": 12, "test_topk": 20,
                 "position_encoding": {"_target_": "PositionEmbeddingSine", "temperature": 20.0},
                 "transformer": {"_target_": "DINOTransformer", "nhead": 4, "num_encoder_layers": 1,
                                 "num_decoder_layers": 2, "ffn_dim": 128, "enc_n_points": 2, "dec_n_points": 2},
                 "denoising": {"_target_": "ContrastiveDenoising", "num_dn_queries": 8},
                 "matcher": {"_target_": "FocalHungarianMatcher"}, "criterion": {"_target_": "DINOCriterion"}, **head},
    }
    return detres.build_model({"model": node})


def _images(*sizes: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


TARGETS = [
    {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [30.0, 5.0, 90.0, 70.0]]), "labels": torch.tensor([0, 2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]


def test_attention_mask_blocks_what_the_paper_says() -> None:
    groups, size, q = 3, 4, 5
    mask = denoising_attn_mask(groups, size, q, torch.device("cpu"))
    d = groups * size
    assert mask.shape == (d + q, d + q)
    assert mask[d:, :d].all() and not mask[d:, d:].any()  # matching queries never see denoising ones
    for g in range(groups):
        rows = slice(g * size, (g + 1) * size)
        own = torch.zeros(d + q, dtype=torch.bool)
        own[g * size:(g + 1) * size] = True
        own[d:] = True  # a group sees itself and the matching queries
        assert torch.equal(~mask[rows], own[None].expand(size, -1))


def test_noised_boxes_stay_within_the_noise_scale() -> None:
    torch.manual_seed(0)
    dn = ContrastiveDenoising(num_classes=5, d_model=16, box_noise_scale=0.4)
    n = 4000
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3]]).repeat(n, 1)  # far from the border: no clamping
    half = torch.tensor([0.1, 0.15, 0.1, 0.15])
    for negative, lo, hi in ((False, 0.0, 0.4), (True, 0.4, 0.8)):
        noised = dn.noised_boxes(boxes, torch.full((n,), negative))
        move = (cxcywh_to_xyxy(noised) - cxcywh_to_xyxy(boxes)).abs() / half
        assert move.min() >= lo - 1e-5 and move.max() < hi + 1e-5
        assert move.max() > hi - 0.05  # the whole range is used
    flipped = (dn.noised_labels(torch.zeros(n, dtype=torch.int64)) != 0).float().mean()
    # flip probability 0.25, and a flip lands on class 0 again 1 time in 5: 0.2 expected
    assert 0.17 < flipped < 0.23


def test_denoising_queries_layout() -> None:
    dn = ContrastiveDenoising(num_classes=3, d_model=8, num_dn_queries=8, label_noise_ratio=0.0, box_noise_scale=0.0)
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[0.6, 0.4, 0.2, 0.2]]), "labels": torch.tensor([0])}]
    q = dn(targets, num_queries=6)
    assert q.num_groups == 4 and q.group_size == 4  # 8 // 2 boxes = 4 groups of (2 positive + 2 negative)
    assert q.content.shape == (2, 16, 8) and q.attn_mask.shape == (22, 22)
    emb = dn.label_enc.weight
    for g in range(4):
        base = g * 4
        assert torch.equal(q.content[0, base + 0], emb[1]) and torch.equal(q.content[0, base + 3], emb[2])
        assert torch.equal(q.content[1, base + 2], emb[0])
        assert q.content[1, base + 1].abs().sum() == 0 and q.content[1, base + 3].abs().sum() == 0  # padding
    assert torch.allclose(q.boxes[0, 0].sigmoid(), targets[0]["boxes"][0], atol=1e-6)
    assert dn([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 6) is None


def test_denoising_losses_in_training_and_zero_at_inference() -> None:
    model = tiny_dino().train()
    losses = model(_images((96, 128), (64, 96)), TARGETS)
    dn_keys = [k for k in losses if "_dn" in k and k.startswith("loss_")]
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_bbox_dn_0"} <= set(dn_keys)
    assert all(losses[k] > 0 and losses[k].requires_grad for k in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn"))
    model.eval()
    batch = model.preprocess(_images((96, 128)))
    with torch.no_grad():
        raw = model.forward_raw(batch)
        assert raw["dn_meta"] is None and raw["pred_logits"].shape == (1, 12, 3)
        terms = model.head.criterion(raw, [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])}])
    assert all(float(terms[k]) == 0.0 for k in terms if "_dn" in k)
    assert float(terms["loss_ce"]) > 0


def test_given_selection_replaces_the_topk() -> None:
    model = tiny_dino().eval()
    batch = model.preprocess(_images((96, 128)))
    with torch.no_grad():
        free = model.dense(batch.tensor, batch.pad_mask)
        forced = model.forward_raw(batch, select_indices=free[-1])
        other = model.forward_raw(batch, select_indices=free[-1].flip(1))
    assert torch.equal(forced["pred_logits"], free[0][-1])
    assert not torch.allclose(other["pred_logits"], forced["pred_logits"])  # content queries are per slot


def test_look_forward_twice_gradient_path() -> None:
    """Layer 1's box loss reaches the box head through layer 0's refinement (undetached for the
    reported box) while the reference handed to layer 1's attention is detached."""
    model = tiny_dino(share_pred_heads=False).train()
    batch = model.preprocess(_images((96, 128)), resize=False)
    out = model.forward_raw(batch)
    out["pred_boxes"].sum().backward()  # the last (second) layer's boxes only
    first = model.head.bbox_embed[0].layers[-1].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_criterion_weight_dict_and_registry() -> None:
    crit = DINOCriterion(num_classes=3, num_decoder_layers=3)
    wd = crit.weight_dict
    assert len(wd) == 21 and wd["loss_ce"] == 1.0 and wd["loss_bbox_dn_1"] == 5.0 and wd["loss_giou_interm"] == 2.0


@pytest.mark.parametrize("size", [(20, 24), (40, 33)])
def test_image_smaller_than_the_largest_stride(size: tuple[int, int]) -> None:
    model = tiny_dino().eval()
    with torch.no_grad():
        dets = model(_images(size))
    # fewer encoder tokens than queries: every token is a query (20x24: 2x2 + 1 + 1 tokens, x 3 classes)
    n = dets[0]["boxes"].shape[0]
    assert (n == 18 if size == (20, 24) else n == 20) and torch.isfinite(dets[0]["boxes"]).all()
    model.train()
    losses = model(_images(size), [{"boxes": torch.tensor([[2.0, 2.0, 15.0, 18.0]]), "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())
