"""detectron2 model-zoo Faster R-CNN checkpoints (``.pkl`` with numpy arrays, or ``.pth``) -> detres names.

Key mapping (detectron2 -> detres):

- ``backbone.bottom_up.stem.conv1.{weight,norm.*}`` -> ``backbone.conv1.weight`` / ``backbone.bn1.*``
- ``backbone.bottom_up.res{s}.{b}.conv{c}.weight`` / ``.conv{c}.norm.*`` -> ``backbone.layer{s-1}.{b}.conv{c}.weight`` / ``.bn{c}.*``;
  ``.shortcut`` -> ``.downsample.0`` (conv) and ``.downsample.1`` (norm)
- ``backbone.fpn_lateral{k}`` / ``backbone.fpn_output{k}`` -> ``neck.lateral_convs.{k-2}.0`` / ``neck.output_convs.{k-2}.0``
  (``.norm`` -> ``.1``)
- ``proposal_generator.rpn_head.conv`` -> ``rpn.head.convs.0`` (or ``conv.{j}.conv`` -> ``convs.{j}``),
  ``objectness_logits`` -> ``objectness``, ``anchor_deltas`` -> ``deltas``
- ``roi_heads.box_head.fc{i}`` -> ``roi_heads.box_head.fcs.{i-1}``; ``conv{i}`` (+ ``.norm``) -> ``convs.{i-1}.0`` (``.1``)
- ``roi_heads.box_predictor.*`` unchanged: detectron2 already puts background last and uses
  contiguous labels (80 for COCO, ordered by COCO id; see ``coco_label_to_cat_id``).
- ``*.cell_anchors.*`` (older checkpoints' anchor buffers) and ``pixel_mean`` / ``pixel_std`` are
  dropped: detres makes them from the config.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from detres.checkpoint.loader import Converter, register_converter


def is_detectron2(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for detectron2's R-CNN layout (model-zoo ``.pkl`` or a trained ``.pth``)."""
    return any(k.startswith("backbone.bottom_up.") for k in sd) or any(
        k.startswith("proposal_generator.rpn_head.") for k in sd
    )


def _rename(k: str) -> str | None:
    if "cell_anchors" in k or k in ("pixel_mean", "pixel_std"):
        return None
    m = re.match(r"backbone\.bottom_up\.stem\.conv1\.(?:norm\.)?(.+)$", k)
    if m:
        return ("backbone.bn1." if ".norm." in k else "backbone.conv1.") + m.group(1)
    m = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(.+)$", k)
    if m:
        stage, block, layer, norm, rest = m.groups()
        prefix = f"backbone.layer{int(stage) - 1}.{block}."
        if layer == "shortcut":
            return prefix + f"downsample.{1 if norm else 0}.{rest}"
        return prefix + (f"bn{layer[-1]}." if norm else f"{layer}.") + rest
    m = re.match(r"backbone\.fpn_(lateral|output)(\d)\.(norm\.)?(.+)$", k)
    if m:
        kind = "lateral_convs" if m.group(1) == "lateral" else "output_convs"
        return f"neck.{kind}.{int(m.group(2)) - 2}.{1 if m.group(3) else 0}.{m.group(4)}"
    m = re.match(r"proposal_generator\.rpn_head\.conv\.(?:(\d+)\.conv\.)?(weight|bias)$", k)
    if m:
        return f"rpn.head.convs.{m.group(1) or 0}.{m.group(2)}"
    m = re.match(r"proposal_generator\.rpn_head\.(objectness_logits|anchor_deltas)\.(.+)$", k)
    if m:
        return f"rpn.head.{'objectness' if m.group(1) == 'objectness_logits' else 'deltas'}.{m.group(2)}"
    m = re.match(r"roi_heads\.box_head\.(fc|conv)(\d+)\.(norm\.)?(.+)$", k)
    if m:
        kind, i, norm, rest = m.groups()
        if kind == "fc":
            return f"roi_heads.box_head.fcs.{int(i) - 1}.{rest}"
        return f"roi_heads.box_head.convs.{int(i) - 1}.{1 if norm else 0}.{rest}"
    return k


def convert_detectron2(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """detectron2 names -> detres names (arrays already float32 tensors)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = _rename(k)
        if new is not None:
            out[new] = v
    return out


register_converter(Converter("detectron2", is_detectron2, convert_detectron2))
