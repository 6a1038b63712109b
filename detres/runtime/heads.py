"""Runtime replacements for head modules: oneDNN linear layers and a box head that flattens NHWC
pooled features without a copy (the row-gather pooler is ``GatherRoIAlign``, a reference module)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from detres.modeling.heads.roi_heads import ConvFCHead

ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear_like(cls: type[nn.Linear], fc: nn.Linear, weight: Tensor | None = None) -> nn.Linear:
    """A ``cls`` of ``fc``'s size sharing its bias and its weight (or the given ``weight`` [out, in])."""
    new = skip_init(cls, fc.in_features, fc.out_features, bias=fc.bias is not None,
                    device=fc.weight.device, dtype=fc.weight.dtype)
    new.weight = fc.weight if weight is None else nn.Parameter(weight, requires_grad=fc.weight.requires_grad)
    new.bias = fc.bias
    new.train(fc.training)
    return new


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` that calls oneDNN's inner product on CPU (float32, weights without grad): 10-25%
    faster than the MKL GEMM behind ``F.linear`` for the box head's FCs and DETR's FFNs here. Same
    maths; float reassociation only."""

    @classmethod
    def from_linear(cls, fc: nn.Linear) -> OneDNNLinear:
        return linear_like(cls, fc)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not self.weight.requires_grad:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class HWCFlattenBoxHead(nn.Module):
    """``ConvFCHead`` that flattens its [N, C, R, R] input in (R, R, C) order, with the first FC's
    columns permuted to match, so that a channels-last input (the row-gather pooler's output)
    flattens as a free view instead of a copy. Same features as the head it was built from (float
    reassociation only); its ``state_dict`` holds the permuted columns, so it is not a checkpoint.
    """

    def __init__(self, head: ConvFCHead) -> None:
        super().__init__()
        if not len(head.fcs):
            raise ValueError("HWCFlattenBoxHead needs a ConvFCHead with at least one FC layer")
        c, r1, r2 = head.flat_shape
        fc = head.fcs[0]
        w = fc.weight.detach().reshape(-1, c, r1, r2).permute(0, 2, 3, 1).reshape(fc.out_features, -1)
        self.convs = head.convs
        self.fcs = nn.ModuleList([linear_like(type(fc), fc, w.contiguous()), *list(head.fcs)[1:]])
        self.out_dim, self.flat_shape = head.out_dim, head.flat_shape

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, R, R] (best channels-last) -> [N, out_dim]."""
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
        x = x.permute(0, 2, 3, 1).flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return x
