"""Anchors for every level of a feature pyramid (Ren et al. 2015, Sec. 3.1; Lin et al. 2017, Sec. 4.1)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detres.registry import HEADS


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_anchors: bool) -> Tensor:
    """[len(ratios) * len(sizes), 4] xyxy anchors centred on (0, 0); ratio = h / w.

    ``round_anchors`` (torchvision) computes in float32 and rounds to integers; otherwise the
    sizes are exact (detectron2: w = sqrt(size^2 / ratio), h = ratio * w, in float64).
    """
    if round_anchors:
        scales = torch.as_tensor(list(sizes), dtype=torch.float32)
        ratios = torch.as_tensor(list(aspect_ratios), dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
    out = []
    for size in sizes:
        for r in aspect_ratios:
            w = math.sqrt(size * size / r)
            h = r * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out, dtype=torch.float32)


@HEADS.register()
class AnchorGenerator(nn.Module):
    """Anchors per pyramid level, location-major and anchor-minor (the RPN head's layout).

    Args:
        sizes: anchor sizes per level, e.g. [[32], [64], [128], [256], [512]].
        aspect_ratios: h/w ratios, one list for all levels or one per level.
        strides: input pixels per feature cell of each level (injected by the RPN from its input shape).
        offset: anchor centres at (i + offset) * stride (detectron2 0.0; 0.5 centres them in the cell).
        round_anchors: torchvision's integer-rounded cell anchors.
        strides_from_image: torchvision's stride = padded image size // feature size per level
            (differs from 2^k on p6 when the padded size is not a multiple of 64).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
        round_anchors: bool = False,
        strides_from_image: bool = False,
    ) -> None:
        super().__init__()
        if len(aspect_ratios) == 1:
            aspect_ratios = list(aspect_ratios) * len(sizes)
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(
                f"anchor sizes ({len(sizes)} levels), aspect_ratios ({len(aspect_ratios)}) and feature "
                f"strides ({len(strides)}) must have one entry per level; fix rpn.anchor_generator.sizes"
            )
        self.strides = [int(s) for s in strides]
        self.offset, self.strides_from_image = offset, strides_from_image
        cells = [cell_anchors(s, r, round_anchors) for s, r in zip(sizes, aspect_ratios)]
        self.num_anchors = [len(c) for c in cells]
        for i, c in enumerate(cells):  # not persistent: they come from the config
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)

    def forward(self, feature_sizes: list[tuple[int, int]], image_size: tuple[int, int]) -> list[Tensor]:
        """Per level [H_l * W_l * A, 4] xyxy anchors in input pixels (same for every image).

        image_size: (H, W) of the padded batch tensor (used with ``strides_from_image``).
        """
        out = []
        for i, (h, w) in enumerate(feature_sizes):
            base: Tensor = getattr(self, f"cell_anchors_{i}")
            if self.strides_from_image:
                sy, sx = image_size[0] // h, image_size[1] // w
            else:
                sy = sx = self.strides[i]
            dev = base.device
            shift_x = torch.arange(0, w, dtype=torch.int32, device=dev).float() * sx + self.offset * sx
            shift_y = torch.arange(0, h, dtype=torch.int32, device=dev).float() * sy + self.offset * sy
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=1)
            out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return out
