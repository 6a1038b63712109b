"""Tiny random-weight detectors for the runtime pass tests, and a detection matcher."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.config import load_config
from detres.modeling.build import build_model
from detres.modeling.heads.roi_heads import BoxPredictor
from detres.modeling.layers.ms_deform_attn import MSDeformAttn
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


class TinyDeformModel(nn.Module):
    """Stand-in for a Deformable DETR in the pass tests: an encoder ``MSDeformAttn`` over three levels
    (token centres as 2-d reference points, padding mask) and a decoder one (4-d reference boxes) plus
    a Linear, random weights with offsets wide enough to sample outside the maps; eval mode."""

    SHAPES = [(10, 13), (5, 7), (3, 4)]

    def __init__(self, d_model: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        n = len(self.SHAPES)
        self.encoder = MSDeformAttn(d_model, n_levels=n, n_heads=4, n_points=3)
        self.decoder = MSDeformAttn(d_model, n_levels=n, n_heads=4, n_points=2)
        self.box = nn.Linear(d_model, 4)
        with torch.no_grad():
            for attn in (self.encoder, self.decoder):
                attn.sampling_offsets.weight.normal_(0, 0.3)
                attn.attention_weights.weight.normal_(0, 0.3)
        self.eval()

    @staticmethod
    def inputs(batch: int = 2, queries: int = 7, d_model: int = 32, seed: int = 1) -> tuple[torch.Tensor, ...]:
        """Random (tokens [B, S, C], queries [B, Q, C], padding mask [B, S]; the last image's last
        level column is padding)."""
        g = torch.Generator().manual_seed(seed)
        s = sum(h * w for h, w in TinyDeformModel.SHAPES)
        mask = torch.zeros(batch, s, dtype=torch.bool)
        h, w = TinyDeformModel.SHAPES[-1]
        mask[-1, s - h * w:] = (torch.arange(h * w) % w) == w - 1
        return torch.randn(batch, s, d_model, generator=g), torch.randn(batch, queries, d_model, generator=g), mask

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> memory [B, S, C] (encoder output) and out [B, Q, C] (decoder output)."""
        centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                                        indexing="ij")[::-1], -1).reshape(-1, 2)
                             for h, w in self.SHAPES])  # [S, 2] (x, y)
        ref = centres[None, :, None, :].expand(tokens.shape[0], -1, len(self.SHAPES), -1)
        memory = self.encoder(tokens, ref, tokens, self.SHAPES, mask)
        boxes = self.box(queries).sigmoid()[:, :, None, :].expand(-1, -1, len(self.SHAPES), -1)
        return {"memory": memory, "out": self.decoder(queries, boxes, memory, self.SHAPES, mask)}
