"""torchvision ``fasterrcnn_resnet50_fpn`` / ``_v2`` state dicts -> detres ``FasterRCNN`` names.

Key mapping (torchvision -> detres):

- ``backbone.body.*`` -> ``backbone.*`` (same ResNet names)
- ``backbone.fpn.inner_blocks.{i}[.0|.1].*`` -> ``neck.lateral_convs.{i}.{0|1}.*``;
  ``backbone.fpn.layer_blocks.{i}...`` -> ``neck.output_convs.{i}...``
- ``rpn.head.conv.{j}.0.*`` (or v1's old ``rpn.head.conv.*``) -> ``rpn.head.convs.{j}.*``;
  ``rpn.head.cls_logits`` -> ``rpn.head.objectness``; ``rpn.head.bbox_pred`` -> ``rpn.head.deltas``
- ``roi_heads.box_head.fc6/fc7`` -> ``roi_heads.box_head.fcs.0/1``; v2's ``box_head.{n}.0/.1`` (conv,
  norm) -> ``box_head.convs.{i}.0/.1`` and its Linear ``box_head.{n}`` -> ``box_head.fcs.{j}``
- ``roi_heads.box_predictor.*``: torchvision's 91 slots (0 = background, slot = COCO id) become
  detres' K+1 rows with background last: K = 80 takes the 80 COCO ids in contiguous order (the
  default configs), K = 90 keeps every slot (label = COCO id - 1), for exact equivalence tests.
  ``coco_label_to_cat_id`` gives the evaluator the COCO id of each label.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS, TORCHVISION_COCO_SLOTS
from detres.checkpoint.loader import Converter, register_converter


def is_torchvision_frcnn(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a torchvision ``FasterRCNN`` state dict."""
    return "rpn.head.cls_logits.weight" in sd and any(k.startswith("backbone.body.") for k in sd)


def class_rows(num_classes: int, total_slots: int) -> list[int]:
    """Source rows (torchvision slot indices) of detres' K+1 class rows, background (slot 0) last."""
    if num_classes == total_slots - 1:
        return list(range(1, total_slots)) + [0]
    if total_slots == TORCHVISION_COCO_SLOTS and num_classes == len(COCO_CATEGORY_IDS):
        return list(COCO_CATEGORY_IDS) + [0]
    raise ValueError(
        f"torchvision box predictor has {total_slots} class slots but the model has num_classes={num_classes} "
        f"(key roi_heads.box_predictor.cls_score.weight); set roi_heads.num_classes to 80 (COCO contiguous) "
        f"or {total_slots - 1} (all slots)"
    )


def _model_num_classes(model: nn.Module, default: int) -> int:
    heads = getattr(model, "roi_heads", None)
    return int(getattr(heads, "num_classes", default))


def _map_box_head(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """Old -> new names of a v2 sequential box head (``box_head.{n}.0/.1`` convs, ``box_head.{n}`` FCs)."""
    conv_idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"roi_heads\.box_head\.(\d+)\.\d+\.", k))})
    fc_idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"roi_heads\.box_head\.(\d+)\.(weight|bias)$", k))})
    ren: dict[str, str] = {}
    for i, n in enumerate(conv_idx):
        ren[f"roi_heads.box_head.{n}."] = f"roi_heads.box_head.convs.{i}."
    for j, n in enumerate(fc_idx):
        ren[f"roi_heads.box_head.{n}."] = f"roi_heads.box_head.fcs.{j}."
    return ren


def _rename(k: str, box_head: dict[str, str]) -> str:
    if k.startswith("backbone.body."):
        return "backbone." + k[len("backbone.body."):]
    m = re.match(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(?:(\d+)\.)?(.+)$", k)
    if m:
        kind = "lateral_convs" if m.group(1) == "inner" else "output_convs"
        return f"neck.{kind}.{m.group(2)}.{m.group(3) or 0}.{m.group(4)}"
    m = re.match(r"rpn\.head\.conv\.(?:(\d+)\.0\.)?(weight|bias)$", k)
    if m:
        return f"rpn.head.convs.{m.group(1) or 0}.{m.group(2)}"
    k = k.replace("rpn.head.cls_logits.", "rpn.head.objectness.").replace("rpn.head.bbox_pred.", "rpn.head.deltas.")
    k = k.replace("roi_heads.box_head.fc6.", "roi_heads.box_head.fcs.0.").replace("roi_heads.box_head.fc7.", "roi_heads.box_head.fcs.1.")
    for old, new in box_head.items():
        if k.startswith(old):
            return new + k[len(old):]
    return k


def convert_torchvision_frcnn(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename to detres keys and reorder the predictor's classes to the model's ``num_classes``."""
    own = model.state_dict()
    box_head = _map_box_head(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = _rename(k, box_head)
        if new.endswith("num_batches_tracked") and new not in own:
            continue  # FrozenBN in detres where torchvision trained BatchNorm
        out[new] = v
    cls = out.get("roi_heads.box_predictor.cls_score.weight")
    if cls is not None:
        rows = class_rows(_model_num_classes(model, cls.shape[0] - 1), cls.shape[0])
        for name in ("weight", "bias"):
            out[f"roi_heads.box_predictor.cls_score.{name}"] = out[f"roi_heads.box_predictor.cls_score.{name}"][rows]
            box = out[f"roi_heads.box_predictor.bbox_pred.{name}"]
            box = box.view(cls.shape[0], 4, *box.shape[1:])[rows[:-1]]
            out[f"roi_heads.box_predictor.bbox_pred.{name}"] = box.reshape(-1, *box.shape[2:])
    return out


register_converter(Converter("torchvision", is_torchvision_frcnn, convert_torchvision_frcnn))
