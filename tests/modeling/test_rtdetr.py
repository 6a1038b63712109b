"""RT-DETR with tiny random weights (ResNet-18-vd, HybridEncoder 64, one decoder layer, 20 queries):
output keys and shapes in eval and training (denoising outputs only with denoising queries), a one-batch
overfit, gradients through the deformable attention, the encoder (AIFI, CCFF) and the backbone, given
query selections, images smaller than the largest stride, and the fixed-size test input."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

import detres

H = W = 128
TARGETS = [
    {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 40.0, 120.0, 110.0]]), "labels": torch.tensor([0, 2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]


def tiny_rtdetr(num_classes: int = 3, **input: Any) -> torch.nn.Module:
    """R18-vd (BN, trainable) -> HybridEncoder(64) -> 1 decoder layer, 20 queries, 8 denoising queries;
    ``fixed_size_test`` 128x128 unless ``input`` says otherwise."""
    torch.manual_seed(0)
    inp = {"unit_range": True, "pixel_mean": [0.0, 0.0, 0.0], "pixel_std": [255.0, 255.0, 255.0],
           "fixed_size_test": [H, W], "size_divisibility": 32, **input}
    node = {
        "_target_": "RTDETR", "input": inp,
        "backbone": {"_target_": "ResNet", "depth": 18, "variant": "d", "norm": "bn", "freeze_at": 0,
                     "out_features": ["res3", "res4", "res5"]},
        "neck": {"_target_": "HybridEncoder", "hidden_dim": 64, "nhead": 4, "dim_feedforward": 128},
        "head": {"_target_": "RTDETRHead", "num_classes": num_classes, "num_queries": 20, "test_topk": 20,
                 "transformer": {"_target_": "RTDETRTransformer", "nhead": 4, "num_decoder_layers": 1, "ffn_dim": 128},
                 "denoising": {"_target_": "ContrastiveDenoising", "num_dn_queries": 8},
                 "matcher": {"_target_": "FocalHungarianMatcher", "cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0},
                 "criterion": {"_target_": "RTDETRCriterion"}},
    }
    return detres.build_model({"model": node})


def _images(*sizes: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_rtdetr()


def test_raw_outputs_in_eval_and_with_denoising(model) -> None:
    model.eval()
    batch = model.preprocess(_images((H, W), (96, 112)), resize=True)
    assert batch.tensor.shape == (2, 3, H, W)
    with torch.no_grad():
        raw = model.forward_raw(batch)
    assert raw["pred_logits"].shape == (2, 20, 3) and raw["pred_boxes"].shape == (2, 20, 4)
    assert raw["aux_outputs"] == []  # one decoder layer: no earlier layers
    assert raw["enc_aux_outputs"][0]["pred_logits"].shape == (2, 20, 3)
    assert "dn_aux_outputs" not in raw and "dn_meta" not in raw
    assert ((raw["pred_boxes"] >= 0) & (raw["pred_boxes"] <= 1)).all()
    model.train()
    norm = model.normalized_targets(batch, TARGETS)
    dn = model.head.denoising(norm, model.head.num_queries)
    raw = model.forward_raw(batch, dn=dn)
    d = dn.content.shape[1]
    assert raw["pred_logits"].shape == (2, 20, 3)  # the matching queries only
    assert len(raw["dn_aux_outputs"]) == 1 and raw["dn_aux_outputs"][0]["pred_boxes"].shape == (2, d, 4)
    assert raw["dn_meta"]["dn_num_split"] == [d, 20] and raw["dn_meta"]["dn_num_group"] == dn.num_groups
    losses = model(_images((H, W), (96, 112)), TARGETS)
    assert {"loss_vfl", "loss_bbox", "loss_giou", "loss_vfl_enc_0", "loss_vfl_dn_0"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        dets = model(_images((H, W), (60, 200)))
    assert [tuple(r["boxes"].shape) for r in dets] == [(20, 4), (20, 4)]
    # mapped back from the 128x128 input to 60x200 (corners unclipped: up to 1.5x the side)
    assert dets[1]["boxes"][:, 0::2].max() <= 1.5 * 200 + 1e-3 and dets[1]["boxes"][:, 1::2].max() <= 1.5 * 60 + 1e-3


def test_gradients_reach_attention_encoder_and_backbone() -> None:
    m = tiny_rtdetr().train()
    loss = sum(m(_images((H, W), (96, 128)), TARGETS).values())
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    for part in ("sampling_offsets", "attention_weights", "neck.encoder.0", "neck.fpn_blocks", "neck.pan_blocks",
                 "neck.lateral_convs", "backbone.conv1.0", "backbone.layer1"):
        hit = [n for n in grads if part in n]
        assert hit, part
        assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in hit), f"no gradient reaches {part}"


def test_overfit_one_batch() -> None:
    """One batch (an image with two boxes, one with none), AdamW 1e-3, gradient clip 1.0: 50 steps cut
    the total loss >= 3x (10.0 -> ~2.0 on this seed, ~15 CPU s). Denoising off: its random noise
    draws new queries every step, so the loss of one fixed batch would not be a fixed target."""
    m = tiny_rtdetr().train()
    m.head.denoising = None
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    images = _images((H, W), (H, W))
    losses = []
    for _ in range(50):
        loss = sum(m(images, TARGETS).values())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-5:]) * 3 <= losses[0], losses


def test_select_indices_replace_the_topk(model) -> None:
    model.eval()
    batch = model.preprocess(_images((H, W), (H, W)), resize=True)
    with torch.no_grad():
        *_, topk = model.dense(batch.tensor, batch.pad_mask)
        base = model.forward_raw(batch)
        same = model.forward_raw(batch, select_indices=topk)
        perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
        moved = model.forward_raw(batch, select_indices=topk[:, perm])
        other = model.forward_raw(batch, select_indices=topk.flip(0))  # the other image's anchors
    assert torch.equal(same["pred_logits"], base["pred_logits"]) and torch.equal(same["pred_boxes"], base["pred_boxes"])
    enc = base["enc_aux_outputs"][0]
    assert torch.equal(moved["enc_aux_outputs"][0]["pred_boxes"], enc["pred_boxes"][:, perm])
    assert torch.equal(moved["enc_aux_outputs"][0]["pred_logits"], enc["pred_logits"][:, perm])
    assert not torch.allclose(other["enc_aux_outputs"][0]["pred_boxes"], enc["pred_boxes"])


def test_image_smaller_than_the_largest_stride() -> None:
    m = tiny_rtdetr(fixed_size_test=None, min_size_test=0, max_size_test=0)
    images = _images((20, 24), (H, W))
    m.eval()
    with torch.no_grad():
        dets = m(images)
    assert dets[0]["boxes"].shape == (20, 4) and torch.isfinite(dets[0]["boxes"]).all()
    # in the image's own pixels: cxcywh in [0, 1] of the unpadded 20x24 image (the official
    # postprocess does not clip, so a corner can reach 1.5x the side)
    assert dets[0]["boxes"][:, 0::2].max() <= 1.5 * 24 + 1e-3 and dets[0]["boxes"][:, 1::2].max() <= 1.5 * 20 + 1e-3
    m.train()
    # two small images (BatchNorm needs more than one value per channel at res5's 1x1)
    small = [{"boxes": torch.tensor([[2.0, 3.0, 15.0, 18.0]]), "labels": torch.tensor([1])},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = m([images[0], _images((24, 20))[0]], small)
    assert all(torch.isfinite(v) for v in losses.values())


def test_fixed_size_test_resizes_and_maps_boxes_back(model) -> None:
    model.eval()
    img = _images((100, 150))[0].float()
    batch = model.preprocess([img, _images((300, 90))[0]], resize=True)
    assert batch.tensor.shape[-2:] == (H, W) and batch.image_sizes == [(H, W), (H, W)]
    assert not batch.pad_mask.any()
    resized = F.interpolate(img[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0]
    with torch.no_grad():
        a, b = model([img])[0], model([resized])[0]
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
    scale = torch.tensor([150 / W, 100 / H, 150 / W, 100 / H])
    torch.testing.assert_close(a["boxes"], b["boxes"] * scale, atol=1e-3, rtol=0)
