"""Box deltas (dx, dy, dw, dh) between reference and target boxes (Girshick et al. 2014, App. C)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detres.registry import LAYERS

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


@LAYERS.register()
class BoxCoder:
    """Encodes xyxy targets relative to xyxy reference boxes and decodes deltas back.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the deltas (RPN 1,1,1,1; Fast R-CNN 10,10,5,5).
        scale_clamp: upper bound of dw, dh before exp (both references: log(1000/16)).
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        if len(weights) != 4:
            raise ValueError(f"box coder weights need 4 values (wx, wy, ww, wh), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    def encode(self, boxes: Tensor, targets: Tensor) -> Tensor:
        """[N, 4] reference xyxy, [N, 4] target xyxy -> [N, 4] deltas."""
        wx, wy, ww, wh = self.weights
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        cx = boxes[:, 0] + 0.5 * w
        cy = boxes[:, 1] + 0.5 * h
        tw = targets[:, 2] - targets[:, 0]
        th = targets[:, 3] - targets[:, 1]
        tcx = targets[:, 0] + 0.5 * tw
        tcy = targets[:, 1] + 0.5 * th
        return torch.stack(
            [wx * (tcx - cx) / w, wy * (tcy - cy) / h, ww * torch.log(tw / w), wh * torch.log(th / h)], dim=1
        )

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """[N, 4k] deltas (k boxes per reference, e.g. one per class) on [N, 4] xyxy -> [N, 4k] xyxy."""
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        cx = boxes[:, 0] + 0.5 * w
        cy = boxes[:, 1] + 0.5 * h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pcx = dx * w[:, None] + cx[:, None]
        pcy = dy * h[:, None] + cy[:, None]
        pw = torch.exp(dw) * w[:, None]
        ph = torch.exp(dh) * h[:, None]
        out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
        return out.flatten(1)
