"""Official RT-DETR ``PResNet`` (ResNet-vd) state dicts -> detres ``ResNet`` names.

The official backbone (lyuwenyu/RT-DETR, ``src/nn/backbone/presnet.py``, variant d) names its stem
``conv1.conv1_{1,2,3}.{conv,norm}`` and its blocks ``res_layers.{i}.blocks.{j}.{branch2a,branch2b,
branch2c,short}``; the first block of every stage has a projection ``short``: ``short.conv/.norm``
(stride 1, no pooling: stage 0) or ``short.conv.conv/.conv.norm`` (after the 2x2 average pool).
detres' ``ResNet(variant="d", first_block_projection=True)`` holds the same tensors under timm's
``resnet*d`` names:

    conv1.conv1_1.conv / .norm   -> conv1.0 / conv1.1
    conv1.conv1_2.conv / .norm   -> conv1.3 / conv1.4
    conv1.conv1_3.conv / .norm   -> conv1.6 / bn1
    res_layers.i.blocks.j.branch2{a,b,c}.conv / .norm -> layer{i+1}.j.conv{1,2,3} / .bn{1,2,3}
    res_layers.i.blocks.j.short[.conv].conv / .norm   -> layer{i+1}.j.downsample.1 / .2

``num_batches_tracked`` (present with ``nn.BatchNorm2d``, R18 configs; absent with the official
``FrozenBatchNorm2d``, R50) is renamed like its norm. The RT-DETR checkpoint converter passes the
backbone part with its ``backbone.`` prefix removed.
"""
from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["convert_presnet", "is_presnet", "presnet_key", "presnet_resnet_args"]

_STEM = {
    "conv1.conv1_1.conv.": "conv1.0.",
    "conv1.conv1_1.norm.": "conv1.1.",
    "conv1.conv1_2.conv.": "conv1.3.",
    "conv1.conv1_2.norm.": "conv1.4.",
    "conv1.conv1_3.conv.": "conv1.6.",
    "conv1.conv1_3.norm.": "bn1.",
}
# Longest prefix first: the pooled shortcut's ``short.conv.conv.`` before the plain ``short.conv.``.
_BLOCK_PARTS = {
    "branch2a.conv.": "conv1.",
    "branch2a.norm.": "bn1.",
    "branch2b.conv.": "conv2.",
    "branch2b.norm.": "bn2.",
    "branch2c.conv.": "conv3.",
    "branch2c.norm.": "bn3.",
    "short.conv.conv.": "downsample.1.",
    "short.conv.norm.": "downsample.2.",
    "short.conv.": "downsample.1.",
    "short.norm.": "downsample.2.",
}
_BLOCK = re.compile(r"res_layers\.(\d+)\.blocks\.(\d+)\.(.+)")
# (bottleneck?, blocks per stage) -> depth, as the official ResNet_cfg (152 added for completeness).
_DEPTHS = {
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
}


def presnet_key(key: str) -> str:
    """The detres ``ResNet`` name of one official PResNet key (no ``backbone.`` prefix).

    Raises ValueError naming the key when it is not part of a variant-d PResNet.
    """
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = _BLOCK.fullmatch(key)
    if m:
        stage, block, rest = m.groups()
        for old, new in _BLOCK_PARTS.items():
            if rest.startswith(old):
                return f"layer{int(stage) + 1}.{block}.{new}{rest[len(old):]}"
    raise ValueError(
        f"PResNet key '{key}' is not part of an RT-DETR ResNet-vd backbone (expected conv1.conv1_{{1,2,3}}.* "
        "or res_layers.I.blocks.J.{branch2a,branch2b,branch2c,short}.*); pass only the backbone's keys, "
        "without the 'backbone.' prefix"
    )


def convert_presnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official PResNet state dict (keys without ``backbone.``) -> detres
    ``ResNet(variant="d", first_block_projection=True)`` state dict; the same tensors, renamed."""
    return {presnet_key(k): v for k, v in sd.items()}


def is_presnet(sd: dict[str, Any]) -> bool:
    """Whether ``sd`` (no prefix) is laid out as the official PResNet: a ``res_layers.`` stage and the 3-conv stem."""
    return any(k.startswith("res_layers.") for k in sd) and any(k.startswith("conv1.conv1_1.") for k in sd)


def presnet_resnet_args(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The detres ``ResNet`` arguments that fit an official PResNet state dict, read from its tensors:
    ``depth`` (block counts per stage, BasicBlock vs BottleNeck), ``variant`` d,
    ``first_block_projection`` True and ``norm``: ``bn`` when the norms carry ``num_batches_tracked``
    (``nn.BatchNorm2d``, freeze_norm False as the R18 configs), else ``frozen_bn`` (the official
    ``FrozenBatchNorm2d``, R50)."""
    if "conv1.conv1_2.conv.weight" not in sd:
        raise ValueError("PResNet state dict has no 'conv1.conv1_2.conv.weight': only variant d (3-conv stem) is supported")
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = _BLOCK.fullmatch(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = tuple(len(blocks.get(i, ())) for i in range(4))
    bottleneck = any(".branch2c." in k for k in sd)
    depth = _DEPTHS.get((bottleneck, counts))
    if depth is None:
        kind = "BottleNeck" if bottleneck else "BasicBlock"
        raise ValueError(f"PResNet with {kind} blocks per stage {counts} matches no depth of 18/34/50/101/152")
    norm = "bn" if any(k.endswith("num_batches_tracked") for k in sd) else "frozen_bn"
    return {"depth": depth, "variant": "d", "first_block_projection": True, "norm": norm}
