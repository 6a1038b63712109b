"""Official DETR checkpoints (facebookresearch/detr, e.g. ``detr-r50-e632da11.pth``) -> detres names.

Key mapping (reference -> detres DETR):

- ``backbone.0.body.*`` (torchvision ResNet) -> ``backbone.*``
- ``backbone.1.{row,col}_embed.weight`` (learned positions) -> ``head.position_encoding.*``
- ``input_proj.{weight,bias}`` -> ``neck.convs.0.0.*`` (ChannelMapper)
- ``transformer.*``, ``query_embed.*``, ``class_embed.*``, ``bbox_embed.layers.*`` -> ``head.*``;
  attention keeps ``nn.MultiheadAttention``'s packed ``in_proj_weight`` [3C, C] (q, k, v row blocks)
  and ``in_proj_bias`` [3C], so those tensors are copied unchanged.
- ``detr.*`` (the panoptic model's wrapper) is stripped; its mask head stays unused.

Classes: the official heads have 92 logits indexed by raw COCO category id (1..90, unused ids are
never targets) plus no-object at 91. A model with ``num_classes: 91`` keeps that layout (its labels
are COCO ids); a model with ``num_classes: 80`` gets rows [80 COCO ids in contiguous order, 91]; any
other class count leaves ``class_embed`` out of the load (reported missing) for fine-tuning.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS, coco_label_to_cat_id
from detres.checkpoint.loader import Converter, register_converter

logger = logging.getLogger(__name__)

NUM_RAW_COCO_SLOTS = 91  # official DETR's num_classes: max COCO id + 1


#: The COCO category id of each model label (identity for the 91-slot raw layout, the contiguous table
#: for 80 classes), for the evaluator when a converted official DETR is scored on COCO.
label_to_coco_id = coco_label_to_cat_id


_PREFIXES = (
    ("backbone.0.body.", "backbone."),
    ("backbone.1.", "head.position_encoding."),
    ("input_proj.", "neck.convs.0.0."),
    ("transformer.", "head.transformer."),
    ("query_embed.", "head.query_embed."),
    ("class_embed.", "head.class_embed."),
    ("bbox_embed.", "head.bbox_embed."),
)


def is_official_detr(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a state dict laid out as facebookresearch/detr's ``DETR`` (or its panoptic wrapper);
    official Deformable DETR (which has ``transformer.level_embed``) is not."""
    keys = [k[5:] if k.startswith("detr.") else k for k in sd]
    return ("query_embed.weight" in keys and any(k.startswith("transformer.decoder.") for k in keys)
            and "transformer.level_embed" not in keys)


def _remap_classes(name: str, t: torch.Tensor, own: dict[str, torch.Tensor]) -> torch.Tensor | None:
    want = own.get(name)
    if want is None or want.shape[0] == t.shape[0]:
        return t
    if t.shape[0] == NUM_RAW_COCO_SLOTS + 1 and want.shape[0] == len(COCO_CATEGORY_IDS) + 1:
        rows = torch.tensor([*COCO_CATEGORY_IDS, NUM_RAW_COCO_SLOTS])
        return t[rows]
    logger.warning(
        "%s: checkpoint has %d class logits, model %d; left out (random init) for fine-tuning",
        name, t.shape[0], want.shape[0],
    )
    return None


def convert_official_detr(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official DETR state dict to ``model``'s (a detres ``DETR``) names; see the module doc."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[5:] if key.startswith("detr.") else key
        new = next((dst + k[len(src):] for src, dst in _PREFIXES if k.startswith(src)), None)
        if new is None:
            out[key] = value  # e.g. the panoptic mask head: reported unused by the loader
            continue
        if new.endswith("in_proj_weight") and value.dim() == 2 and value.shape[0] != 3 * value.shape[1]:
            raise ValueError(f"{key}: expected a packed [3C, C] q/k/v projection, got {tuple(value.shape)}")
        if new.startswith("head.class_embed."):
            value = _remap_classes(new, value, own)
            if value is None:
                continue
        out[new] = value
    return out


DETR_CONVERTER = register_converter(Converter("detr", is_official_detr, convert_official_detr))
