"""Normalization layers by name: bn, frozen_bn, syncbn, gn."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("bn", "frozen_bn", "syncbn", "gn")


def make_norm(norm: str, channels: int, gn_groups: int = 32) -> nn.Module:
    """A 2-D norm layer over ``channels``; ``frozen_bn`` keeps fixed statistics and affine (eps 1e-5)."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    if norm == "gn":
        return nn.GroupNorm(gn_groups, channels)
    if norm in ("", "none"):
        return nn.Identity()
    raise ValueError(f"unknown norm '{norm}'; use one of {', '.join(NORMS)} or 'none'")


def to_frozen_bn(bn: nn.Module) -> nn.Module:
    """A FrozenBatchNorm2d with ``bn``'s statistics and affine; other modules come back as they are."""
    if not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return bn
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.weight.copy_(bn.weight.detach())
    frozen.bias.copy_(bn.bias.detach())
    frozen.running_mean.copy_(bn.running_mean)
    frozen.running_var.copy_(bn.running_var)
    return frozen


def freeze_module(module: nn.Module) -> None:
    """Stop gradients into ``module`` and turn its BatchNorms into FrozenBatchNorm2d in place."""
    for p in module.parameters():
        p.requires_grad_(False)
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            setattr(module, name, to_frozen_bn(child))
        else:
            freeze_module(child)


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``, with a FrozenBatchNorm2d applied to the conv's weights instead of its output.

    A frozen norm is a fixed affine map per channel, so ``conv(x, w) * s + t == conv(x, w * s) + t``:
    scaling the weights costs one multiply per weight instead of a multiply and an add over the whole
    feature map (and their backward pass). Gradients reach ``w`` unchanged, so this holds in training
    too; any other norm (or an ``nn.Identity`` left by ``fold_frozen_bn``) runs as usual, and so does a
    pair with forward hooks on either module, so that hooks keep seeing the modules' own outputs.
    """
    hooked = conv._forward_hooks or conv._forward_pre_hooks or norm._forward_hooks or norm._forward_pre_hooks
    if hooked or not isinstance(norm, FrozenBatchNorm2d) or conv.padding_mode != "zeros":
        return norm(conv(x))
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return F.conv2d(x, weight, shift.to(conv.weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
