"""Tiny random-weight detectors for the runtime pass tests, and a detection matcher."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.config import load_config
from detres.modeling.build import build_model
from detres.modeling.heads.roi_heads import BoxPredictor
from detres.utils.compare import compare_detections

FRCNN = "configs/examples/shapes_faster_rcnn.yaml"
DETR = "configs/examples/shapes_detr.yaml"
FROZEN = ["model.backbone.norm=frozen_bn", "model.backbone.freeze_at=1"]


def random_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics and affine in every FrozenBatchNorm2d, so that folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def tiny_frcnn(*overrides: str) -> nn.Module:
    """The shapes example's ResNet-18 FPN Faster R-CNN (frozen BN, 64-channel FPN), random weights with
    a confident class head so that it returns detections; eval mode."""
    torch.manual_seed(0)
    model = build_model(load_config(FRCNN, [*FROZEN, "model.neck.out_channels=64", *overrides])).eval()
    random_stats(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BoxPredictor):
                m.cls_score.weight.normal_(0, 0.5)
    return model


def tiny_detr(*overrides: str) -> nn.Module:
    """The shapes example's DETR (ResNet-18 with frozen BN, 2+2 layers, width 128), random weights; eval."""
    torch.manual_seed(0)
    model = build_model(load_config(DETR, [*FROZEN, *overrides])).eval()
    random_stats(model)
    return model


def images(*sizes: tuple[int, int], seed: int = 1) -> list[torch.Tensor]:
    """uint8 RGB [3, H, W] images of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


def assert_detections_match(out: list[dict], ref: list[dict], rel: float = 1e-3, min_fraction: float = 1.0) -> None:
    """Same number of detections per image, and at least ``min_fraction`` of them paired one to one
    (``compare_detections``) with a same-label reference detection whose box is within ``rel`` of the
    image's box scale. Every pass keeps all of them on the seeded test models (measured); lower
    ``min_fraction`` only where float reassociation is known to flip a near-tied NMS decision."""
    assert sum(len(r["boxes"]) for r in ref) > 0, "the reference returned no detections: nothing compared"
    for a, b in zip(out, ref, strict=True):
        assert len(a["boxes"]) == len(b["boxes"])
        if not len(b["boxes"]):
            continue
        cmp = compare_detections([a], [b], label_offset=0, atol=rel * float(b["boxes"].abs().max()), score_atol=1.0)
        matched = 1.0 - cmp["unmatched"] / len(b["boxes"])
        assert matched >= min_fraction, cmp


def max_rel_diff(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Largest ``max|out - ref| / max|ref|`` over the keys of ``ref``."""
    assert set(out) == set(ref)
    return max(float((out[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)
