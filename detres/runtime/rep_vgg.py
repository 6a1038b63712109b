"""RepVGG re-parameterization (Ding et al. 2021, Sec. 3.3) for inference: a ``RepVggBlock``'s 3x3 conv
+ BN branch and 1x1 conv + BN branch become one 3x3 conv with a bias, since both are linear in the
input: ``BN3(conv3(x)) + BN1(conv1(x)) = conv(x; s3*W3 + pad(s1*W1)) + (b3' + b1')``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.necks.csp_rep import ConvNormAct, RepVggBlock
from detres.runtime.convs import is_foldable_norm


def _branch(branch: ConvNormAct) -> tuple[Tensor, Tensor]:
    """(weight, bias) in float64 of ``norm(conv(x))`` for a conv whose norm is an eval-mode BatchNorm2d,
    a FrozenBatchNorm2d or already folded (``nn.Identity``)."""
    conv, norm = branch.conv, branch.norm
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    if isinstance(norm, nn.Identity):
        return w, b
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(b)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(norm.running_var.double() + norm.eps)
    return w * scale.view(-1, 1, 1, 1), (b - norm.running_mean.double()) * scale + beta


def is_fusable(m: nn.Module) -> bool:
    """A ``RepVggBlock`` whose two branches are a 3x3 and a 1x1 stride-1 conv with fixed norms (eval
    BatchNorm2d, FrozenBatchNorm2d or folded) and identity activations."""
    if type(m) is not RepVggBlock:
        return False
    c3, c1 = m.conv1, m.conv2
    return (c3.conv.kernel_size == (3, 3) and c1.conv.kernel_size == (1, 1)
            and c3.conv.stride == c1.conv.stride == (1, 1) and c3.conv.padding == (1, 1) and c1.conv.padding == (0, 0)
            and c3.conv.groups == c1.conv.groups == 1
            and all(isinstance(b.norm, nn.Identity) or is_foldable_norm(b.norm)
                    for b in (c3, c1))
            and all(isinstance(b.act, nn.Identity) for b in (c3, c1)))


class FusedRepVggBlock(nn.Module):
    """``act(conv(x))``: a ``RepVggBlock`` with its two branches merged into ``conv`` (3x3, bias),
    the weights summed in float64 and rounded once to the block's dtype. Inference only."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.act = act

    @classmethod
    @torch.no_grad()
    def from_block(cls, block: RepVggBlock) -> FusedRepVggBlock:
        """The fused form of ``block`` (eval mode, fixed norms: see ``is_fusable``)."""
        w3, b3 = _branch(block.conv1)
        w1, b1 = _branch(block.conv2)
        src = block.conv1.conv
        conv = nn.Conv2d(src.in_channels, src.out_channels, 3, 1, padding=1, bias=True,
                         device=src.weight.device, dtype=src.weight.dtype)
        conv.weight.copy_(w3 + F.pad(w1, [1, 1, 1, 1]))
        conv.bias.copy_(b3 + b1)
        conv.weight.requires_grad_(False)
        conv.bias.requires_grad_(False)
        fused = cls(conv, block.act)
        fused.train(block.training)
        return fused

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return self.act(self.conv(x))
