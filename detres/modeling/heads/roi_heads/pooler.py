"""Multi-scale RoIAlign: each box is pooled from one pyramid level (Lin et al. 2017, Eq. 1)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from detres.modeling.layers.roi_align_rows import roi_align_rows
from detres.registry import HEADS

LEVEL_ASSIGNMENTS = ("detectron2", "torchvision")


def assign_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float, canonical_level: int, style: str
) -> Tensor:
    """[N] level index (0 = ``min_level``) of [N, 4] xyxy boxes: k = floor(k0 + log2(sqrt(wh) / 224)).

    ``detectron2`` adds 1e-8 inside the log, ``torchvision`` 1e-6 after it (so a 224-px box maps to
    level k0 in both).
    """
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    if style == "detectron2":
        lv = torch.floor(canonical_level + torch.log2(size / canonical_box_size + 1e-8))
    else:
        lv = torch.floor(canonical_level + torch.log2(size / canonical_box_size) + torch.tensor(1e-6, dtype=size.dtype))
    return (lv.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


@HEADS.register()
class MultiScaleRoIAlign(nn.Module):
    """Pools [sum N_i, C, R, R] features for per-image xyxy boxes from levels of stride 2^k.

    Args:
        strides: stride of each pooled level, finest first (powers of two, consecutive); injected by
            the ROI heads from their input shape.
        output_size: R.
        sampling_ratio: RoIAlign samples per bin side (0 = adaptive, detectron2; torchvision 2).
        aligned: half-pixel shift (detectron2's ROIAlignV2: True; torchvision: False).
        level_assignment: ``detectron2`` or ``torchvision`` rounding of the level formula.

    Pools with ``torchvision.ops.roi_align``; ``GatherRoIAlign`` computes the same with a gather
    (a config choice for CPU training), and ``detres.runtime``'s ``roi_align_rows`` pass swaps it in
    for CPU inference.
    """

    def __init__(
        self,
        strides: Sequence[int],
        output_size: int = 7,
        sampling_ratio: int = 0,
        aligned: bool = True,
        level_assignment: str = "detectron2",
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if level_assignment not in LEVEL_ASSIGNMENTS:
            raise ValueError(f"level_assignment must be one of {LEVEL_ASSIGNMENTS}, got {level_assignment!r}")
        levels = [int(round(math.log2(s))) for s in strides]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"pooler strides {list(strides)} must be consecutive powers of two")
        self.scales = [1.0 / s for s in strides]
        self.min_level, self.max_level = levels[0], levels[-1]
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned
        self.level_assignment = level_assignment
        self.canonical_box_size, self.canonical_level = canonical_box_size, canonical_level

    def forward(self, feats: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """feats: per level [B, C, H, W]; boxes: per image [N_i, 4] xyxy -> [sum N_i, C, R, R]."""
        return self.pool(feats, boxes_to_rois(boxes))

    def pool(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """feats: per level [B, C, H, W]; rois: [N, 5] (batch index, xyxy) -> [N, C, R, R]; each RoI
        from its own level, gathered with ``nonzero`` (data-dependent shapes)."""
        if len(feats) == 1:
            return self.pool_level(feats[0], rois, self.scales[0])
        lv = self.levels(rois)
        r, c = self.output_size, feats[0].shape[1]
        out = feats[0].new_zeros((rois.shape[0], c, r, r)).contiguous(memory_format=self.output_format)
        for k, (x, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.nonzero(lv == k, as_tuple=True)[0]
            if idx.numel():
                out[idx] = self.pool_level(x, rois[idx], scale).to(out.dtype)
        return out

    #: memory format of ``pool``'s output
    output_format = torch.contiguous_format

    def pool_level(self, x: Tensor, rois: Tensor, scale: float) -> Tensor:
        """RoIAlign of ``rois`` [N, 5] on one level ``x`` [B, C, H, W] of stride 1/``scale`` -> [N, C, R, R]."""
        return roi_align(x, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def pool_static(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """``pool`` with shapes that depend only on N (traceable, for export): every RoI is pooled
        from every level and a one-hot sum over levels keeps its own, the same numbers as ``pool``
        with torchvision's kernel at L times the RoIAlign work."""
        r = self.output_size
        pooled = torch.stack([
            roi_align(f, rois, r, scale, self.sampling_ratio, self.aligned) for f, scale in zip(feats, self.scales)
        ])
        if len(feats) == 1:
            return pooled[0]
        levels = torch.arange(len(feats), device=rois.device)
        onehot = (self.levels(rois)[None, :] == levels[:, None]).to(pooled.dtype)
        return (pooled * onehot[:, :, None, None, None]).sum(0)

    def levels(self, rois: Tensor) -> Tensor:
        """[N] level index (0 = finest pooled level) of ``rois`` [N, 5] (batch index, xyxy)."""
        return assign_levels(
            rois[:, 1:], self.min_level, self.max_level, self.canonical_box_size, self.canonical_level,
            self.level_assignment,
        )


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image [N_i, 4] xyxy boxes -> [sum N_i, 5] RoIs (batch index, xyxy), in image order."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)], dim=0)


@HEADS.register()
class GatherRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` computed as a weighted gather of NHWC pixel rows (``roi_align_rows``:
    ``F.embedding_bag`` with per-sample weights), with torchvision's sample points, bilinear weights
    and edge rules: pooled values equal ``torchvision.ops.roi_align``'s to float rounding (1e-5),
    gradients by autograd. On CPU with channels-last features it is 3-4x faster forward + backward
    than torchvision's kernel, which is why CPU training configs pick it:
    ``model.roi_heads.box_pooler._target_=GatherRoIAlign``. A config choice, the same on every device;
    export still traces torchvision's kernel (``pool_static``). Output: a channels-last [N, C, R, R].
    """

    output_format = torch.channels_last

    def pool_level(self, x: Tensor, rois: Tensor, scale: float) -> Tensor:
        return roi_align_rows(x, rois, self.output_size, scale, self.sampling_ratio, self.aligned).permute(0, 3, 1, 2)

    @classmethod
    def like(cls, pooler: MultiScaleRoIAlign) -> "GatherRoIAlign":
        """A gather pooler with ``pooler``'s levels, output size, sampling and level rule."""
        return cls([round(1 / s) for s in pooler.scales], pooler.output_size, pooler.sampling_ratio, pooler.aligned,
                   pooler.level_assignment, pooler.canonical_box_size, pooler.canonical_level)
