"""Normalization layers by name: bn, frozen_bn, syncbn, gn."""
from __future__ import annotations

from torch import nn
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

