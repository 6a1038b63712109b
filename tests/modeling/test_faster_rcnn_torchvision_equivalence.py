"""detres' FasterRCNN with torchvision's config equals torchvision's fasterrcnn_resnet50_fpn(_v2) on
the same (seeded random) weights: proposals, detections, scores and labels.

Random weights need care or the comparison proves nothing: with torchvision's default init and
unit BatchNorm statistics the activations explode through the ResNet, the RPN collapses to a few
proposals and every score saturates at 1.0 (ties make the order arbitrary). So the BatchNorm
statistics are calibrated on a random image (momentum 1, one train-mode pass), zero biases are
randomized (a dropped or misplaced bias would then show), and the box-regression layers are scaled
so that boxes move away from their anchors/proposals. The result has hundreds of proposals and tens
of detections over several classes with distinct scores, which NMS and top-k must order identically.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

from detres.benchmark.reference import compare_detections
from detres.checkpoint import convert_state_dict
from detres.runtime import optimize
from tests.modeling.frcnn_utils import build_from_config

SIZES = [(168, 224), (224, 150), (130, 190)]


def _randomized_torchvision(v2: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    builder = fasterrcnn_resnet50_fpn_v2 if v2 else fasterrcnn_resnet50_fpn
    tv = builder(weights=None, weights_backbone=None, min_size=224, max_size=373).eval()
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = 1.0
                mod.weight.normal_(1, 0.1)
                mod.bias.normal_(0, 0.1)
        tv.backbone.train()
        tv.roi_heads.box_head.train()
        feats = tv.backbone(torch.rand(2, 3, 224, 288))
        for i, key in enumerate(["0", "1", "2", "3"]):  # bring every pyramid level to about unit std
            scale = feats[key].std()
            for m in tv.backbone.fpn.layer_blocks[i].modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
                    if isinstance(m, torch.nn.BatchNorm2d) or not v2:  # v2: scale the BN, not the conv
                        m.weight.div_(scale)
                        if m.bias is not None:
                            m.bias.div_(scale)
        feats = tv.backbone(torch.rand(2, 3, 224, 288))
        if v2:
            tv.roi_heads.box_head(torch.randn(64, 256, 7, 7) * feats["0"].std())
        tv.eval()
        for name, p in tv.named_parameters():
            if name.endswith("bias") and p.abs().max() == 0:
                p.normal_(0, 0.1)
        tv.rpn.head.cls_logits.weight.mul_(20)  # objectness logits spread over a few units
        tv.rpn.head.bbox_pred.weight.mul_(5)
        tv.roi_heads.box_predictor.cls_score.weight.mul_(0.05 if v2 else 0.3)  # unsaturated softmax: no ties
        tv.roi_heads.box_predictor.bbox_pred.weight.mul_(20)
    return tv


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for h, w in SIZES:  # smooth random images: blobs of colour, not pixel noise
        x = torch.rand(1, 3, h // 8, w // 8, generator=g) * 255
        out.append(F.interpolate(x, size=(h, w), mode="bilinear")[0].round().to(torch.uint8))
    return out


def _compare(v2: bool) -> None:
    tv = _randomized_torchvision(v2)
    name = "faster_rcnn_r50_fpn_v2_torchvision_coco" if v2 else "faster_rcnn_r50_fpn_torchvision_coco"
    model = build_from_config(name, [
        "num_classes=90",  # keep torchvision's 90 class slots (label = slot - 1) for exact softmax
        "model.backbone.norm=bn", "model.backbone.freeze_at=0",  # torchvision's weights=None model
        "model.input.min_size_test=224", "model.input.max_size_test=373", "model.input.pad_policy_test=batch_max",
    ]).eval()
    fmt, sd = convert_state_dict({"model": tv.state_dict()}, model)
    assert fmt == "torchvision"
    model.load_state_dict(sd, strict=True)
    images = _images()
    with torch.no_grad():
        tv_in = [im.float() / 255 for im in images]
        ref = tv(tv_in)
        il, _ = tv.transform(tv_in)
        tv_props, _ = tv.rpn(il, tv.backbone(il.tensors))
        # The reference model pools with torchvision's RoIAlign, so what differs is float
        # reassociation only.
        out = model(images)
        batch = model.preprocess(images, resize=True)
        raw = model.forward_raw(batch)
        alone = [model([im])[0] for im in images]
        ref_alone = [tv([x])[0] for x in tv_in]
        # The runtime pass's CPU RoIAlign, an NHWC row gather (checked against torchvision's kernel
        # in tests/runtime/test_roi_align_rows.py).
        gathered = optimize(model, passes=["roi_align_rows"])(images)
    # The gather's detections match as sets (near-tied scores may swap order). Its pooled features
    # differ by float rounding (2e-7 relative), which these random heads (pooled values up to ~1e3,
    # a 4-conv head in v2) amplify to a few hundredths of a pixel in the box regression.
    check = compare_detections(gathered, ref, atol=5e-2, score_atol=1e-5)
    assert check["identical"], check
    for ours, theirs in zip(raw["proposals"], tv_props):
        assert ours.shape == theirs.shape and ours.shape[0] >= 30
        dist = (ours[:, None] - theirs[None]).abs().amax(-1)  # as sets: sigmoid ties reorder them
        assert dist.min(1).values.max() <= 1e-3 and dist.min(0).values.max() <= 1e-3
    total_classes, num_dets = set(), 0
    for o, a, r, ra in zip(out, alone, ref, ref_alone):
        assert 1 <= len(r["boxes"]) <= 100
        assert r["scores"].unique().numel() >= 3  # distinct scores: the order is meaningful
        for d, r in ((o, r), (a, ra)):
            assert len(d["boxes"]) == len(r["boxes"])
            torch.testing.assert_close(d["boxes"], r["boxes"], atol=1e-3, rtol=0)
            torch.testing.assert_close(d["scores"], r["scores"], atol=1e-5, rtol=0)
            assert torch.equal(d["labels"] + 1, r["labels"])
        total_classes |= set(r["labels"].tolist())
        num_dets += len(r["labels"])
    assert len(total_classes) >= 2 and num_dets >= 8


@pytest.mark.slow
def test_equivalence_fasterrcnn_resnet50_fpn() -> None:
    _compare(v2=False)


@pytest.mark.slow
def test_equivalence_fasterrcnn_resnet50_fpn_v2() -> None:
    _compare(v2=True)
