"""Official Deformable-DETR checkpoints (fundamentalvision/Deformable-DETR, ``{"model": state_dict}``)
-> detres names, and the detres config of the model a checkpoint holds, read from its tensors.

Key mapping (reference -> detres ``DeformableDETR``):

- ``backbone.0.body.*`` (torchvision ResNet) -> ``backbone.*``
- ``input_proj.{i}.{0: conv, 1: GroupNorm}.*`` -> ``neck.convs.{i}.*`` for the backbone levels (1x1
  convs), ``neck.extra_convs.{i - n}.*`` for the extra stride-2 levels (3x3 convs) (ChannelMapper)
- ``transformer.decoder.{class,bbox}_embed.*`` (refinement: the same modules as ``class_embed.*`` /
  ``bbox_embed.*``, listed twice by the reference) are dropped after checking that they are equal
- everything else ``X`` (``transformer.*``, ``query_embed.*``, ``class_embed.N.*``, ``bbox_embed.N.*``)
  -> ``head.X``

Classes: the official heads have 91 sigmoid logits, column = COCO category id (no no-object column).
A model with ``num_classes: 91`` keeps that layout (labels are COCO ids); ``num_classes: 80`` takes the
columns of the 80 COCO ids in contiguous order; any other count leaves ``class_embed`` out of the load
(reported missing) for fine-tuning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from detres.checkpoint.deformable_layout import (DEFAULT_NHEADS, DINO_ONLY_KEYS, NUM_RAW_COCO_SLOTS,
                                                 deform_points, drop_unavailable_loss_nodes,
                                                 has_deformable_layout, load_recipe,
                                                 map_backbone_or_input_proj, max_index, num_backbone_levels,
                                                 read_ffn_dim, read_levels, remap_class_rows, resnet_depth,
                                                 set_levels, unique_entries)
from detres.checkpoint.loader import Converter, register_converter

__all__ = ["NUM_RAW_COCO_SLOTS", "DEFAULT_NHEADS", "DEFAULT_TWO_STAGE_QUERIES", "is_official_deformable_detr",
           "convert_official_deformable_detr", "read_architecture", "deformable_detr_config"]

DEFAULT_TWO_STAGE_QUERIES = 300  # the official --num_queries; a two-stage checkpoint has no query tensor


def is_official_deformable_detr(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a state dict laid out as fundamentalvision/Deformable-DETR's ``DeformableDETR``
    (official DINO, which has the same layout plus ``DINO_ONLY_KEYS``, is not)."""
    return has_deformable_layout(sd) and not any(k in sd for k in DINO_ONLY_KEYS)


def convert_official_deformable_detr(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official Deformable-DETR state dict to ``model``'s (a detres ``DeformableDETR``) names."""
    own = model.state_dict()
    n_backbone = num_backbone_levels(own)
    out: dict[str, torch.Tensor] = {}
    for key, value in unique_entries(sd):
        new = map_backbone_or_input_proj(key, n_backbone) or "head." + key
        if new.startswith("head.class_embed."):
            value = remap_class_rows(new, value, own)
            if value is None:
                continue
        out[new] = value
    return out


DEFORMABLE_DETR_CONVERTER = register_converter(
    Converter("deformable_detr", is_official_deformable_detr, convert_official_deformable_detr))


# ---- architecture from the tensors ----------------------------------------------------------------


def read_architecture(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                      num_queries: int | None = None) -> dict[str, Any]:
    """The architecture of an official Deformable-DETR state dict, read from its tensors.

    Returns ``{"depth", "out_features", "num_extra_levels", "d_model", "nhead", "num_encoder_layers",
    "num_decoder_layers", "ffn_dim", "enc_n_points", "dec_n_points", "num_queries", "num_classes",
    "with_box_refine", "two_stage"}``. ``nheads`` cannot be told from ``points`` by shapes (the
    sampling offsets have heads x levels x points x 2 rows): the official default 8 unless given.
    ``num_queries``: read from ``query_embed`` when present; a two-stage checkpoint has none, so the
    value given or the official 300.
    """
    if "transformer.level_embed" not in sd:
        raise ValueError("not an official Deformable-DETR state dict: transformer.level_embed is missing")
    lv = read_levels(sd)
    two_stage = "transformer.enc_output.weight" in sd
    if not two_stage:
        num_queries = sd["query_embed.weight"].shape[0]
    return {
        "depth": resnet_depth(sd),
        "out_features": lv["out_features"],
        "num_extra_levels": lv["num_extra_levels"],
        "d_model": lv["d_model"],
        "nhead": nheads,
        "num_encoder_layers": max_index(sd, "transformer.encoder.layers."),
        "num_decoder_layers": max_index(sd, "transformer.decoder.layers."),
        "ffn_dim": read_ffn_dim(sd),
        "enc_n_points": deform_points(sd, "transformer.encoder.layers.0.self_attn", nheads, lv["levels"]),
        "dec_n_points": deform_points(sd, "transformer.decoder.layers.0.cross_attn", nheads, lv["levels"]),
        "num_queries": int(num_queries if num_queries is not None else DEFAULT_TWO_STAGE_QUERIES),
        "num_classes": int(sd["class_embed.0.weight"].shape[0]),
        "with_box_refine": any(k.startswith("transformer.decoder.bbox_embed.") for k in sd),
        "two_stage": two_stage,
    }


#: the COCO recipe the written configs start from (training and data sections, input, losses)
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "deformable_detr.yaml"


def _set_architecture(cfg: DictConfig, arch: dict[str, Any]) -> None:
    model = cfg.model
    set_levels(cfg, arch)
    for key in ("num_queries", "with_box_refine", "two_stage"):
        model.head[key] = arch[key]
    for key in ("nhead", "num_encoder_layers", "num_decoder_layers", "ffn_dim", "enc_n_points", "dec_n_points"):
        model.head.transformer[key] = arch[key]
    if arch["two_stage"]:  # no reference-point predictor: queries come from the proposals
        cfg.train.param_name_lr_mult.reference_points = None


def deformable_detr_config(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                           num_queries: int | None = None) -> tuple[DictConfig, str]:
    """(config, header comment) of the detres ``DeformableDETR`` that holds the official state dict
    ``sd``: the architecture from ``read_architecture``, everything else (input, training, data) from
    the COCO recipe ``configs/_base_/deformable_detr.yaml``. The config names no ``_base_``."""
    arch = read_architecture(sd, nheads=nheads, num_queries=num_queries)
    cfg = load_recipe(RECIPE)
    _set_architecture(cfg, arch)
    drop_unavailable_loss_nodes(cfg)
    queries = ("num_queries: the checkpoint's query_embed rows" if not arch["two_stage"] else
               f"num_queries: {arch['num_queries']} (two-stage checkpoints hold no query tensor: --num-queries)")
    header = "\n".join([
        "Written by `tools/convert.py --from deformable_detr`: an official Deformable-DETR checkpoint's model.",
        f"Read from its tensors: ResNet-{arch['depth']}, levels {arch['out_features']} + "
        f"{arch['num_extra_levels']} extra, d_model {arch['d_model']}, {arch['num_encoder_layers']} encoder / "
        f"{arch['num_decoder_layers']} decoder layers, FFN {arch['ffn_dim']}, points {arch['enc_n_points']} "
        f"(encoder) / {arch['dec_n_points']} (decoder), {arch['num_classes']} classes, "
        f"with_box_refine {arch['with_box_refine']}, two_stage {arch['two_stage']}.",
        f"Assumed: nhead {nheads} (sampling_offsets rows = heads x levels x points x 2 cannot tell heads "
        "from points; --nheads), " + queries + ", dilation off, dropout 0.1 (training only).",
        "Input, training and data sections: the COCO recipe of configs/_base_/deformable_detr.yaml.",
    ])
    return cfg, header
