"""Official DINO checkpoints (IDEA-Research/DINO, ``checkpoint{x}_{y}scale.pth`` = ``{"model": state_dict}``)
-> detres names, and the detres config of the model a checkpoint holds, read from its tensors.

Key mapping (reference -> detres ``DINO``):

- ``backbone.0.body.*`` (torchvision ResNet) -> ``backbone.*``
- ``input_proj.{i}.{0: conv, 1: GroupNorm}.*`` -> ``neck.convs.{i}.*`` for the backbone levels (1x1
  convs), ``neck.extra_convs.{i - n}.*`` for the extra stride-2 levels (ChannelMapper)
- ``label_enc.*`` (the denoising label book, K + 1 rows) -> ``head.denoising.label_enc.*``
- ``transformer.decoder.{class,bbox}_embed.*`` (the head's modules, listed twice by the reference)
  are dropped after checking that they are equal
- everything else ``X`` (``transformer.*`` incl. ``tgt_embed`` and ``enc_out_*``, ``class_embed.N.*``,
  ``bbox_embed.N.*``) -> ``head.X``

Classes: the official heads have 91 sigmoid logits, row = COCO category id. A model with
``num_classes: 91`` keeps that layout; ``num_classes: 80`` takes the rows of the 80 COCO ids in
contiguous order (``class_embed``, ``enc_out_class_embed``, and ``label_enc`` whose padding row stays
last); any other count leaves them out of the load (reported missing) for fine-tuning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from detres.checkpoint.deformable_layout import (DEFAULT_NHEADS, deform_points, drop_unavailable_loss_nodes,
                                                 has_deformable_layout, load_recipe,
                                                 map_backbone_or_input_proj, max_index, num_backbone_levels,
                                                 read_ffn_dim, read_levels, remap_class_rows, resnet_depth,
                                                 set_levels, unique_entries)
from detres.checkpoint.loader import Converter, register_converter

__all__ = ["is_official_dino", "convert_official_dino", "read_dino_architecture", "dino_config", "DINO_CONVERTER"]

_CLASS_ROWS = ("head.class_embed.", "head.transformer.enc_out_class_embed.")
_LABEL_BOOK = "head.denoising.label_enc."


def is_official_dino(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a state dict laid out as IDEA-Research/DINO's ``DINO``: the deformable-DETR layout plus
    learned content queries ``transformer.tgt_embed``."""
    return has_deformable_layout(sd) and "transformer.tgt_embed.weight" in sd


def convert_official_dino(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official DINO state dict to ``model``'s (a detres ``DINO``) names; see the module doc."""
    own = model.state_dict()
    n_backbone = num_backbone_levels(own)
    out: dict[str, torch.Tensor] = {}
    for key, value in unique_entries(sd):
        new = map_backbone_or_input_proj(key, n_backbone)
        if new is None:
            new = "head.denoising." + key if key.startswith("label_enc.") else "head." + key
        if new.startswith(_CLASS_ROWS) or new.startswith(_LABEL_BOOK):
            value = remap_class_rows(new, value, own, trailing=1 if new.startswith(_LABEL_BOOK) else 0)
            if value is None:
                continue
        out[new] = value
    return out


DINO_CONVERTER = register_converter(Converter("dino", is_official_dino, convert_official_dino))


# ---- architecture from the tensors ----------------------------------------------------------------


def _shared(sd: dict[str, torch.Tensor], prefix: str, layers: int) -> bool:
    """Whether ``{prefix}.{i}.*`` hold the same values for every decoder layer i (one shared module)."""
    first = {k[len(f"{prefix}.0."):]: v for k, v in sd.items() if k.startswith(f"{prefix}.0.")}
    for i in range(1, layers):
        for name, value in first.items():
            other = sd.get(f"{prefix}.{i}.{name}")
            if other is None or other.shape != value.shape or not torch.equal(other, value):
                return False
    return True


def read_dino_architecture(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS) -> dict[str, Any]:
    """The architecture of an official DINO state dict, read from its tensors.

    Returns ``{"depth", "out_features", "num_extra_levels", "d_model", "nhead", "num_encoder_layers",
    "num_decoder_layers", "ffn_dim", "enc_n_points", "dec_n_points", "num_queries", "num_classes",
    "share_pred_heads", "denoising"}``: levels from ``level_embed`` and the input projections (4-scale:
    res3..res5 + 1 extra, 5-scale: res2..res5 + 1 extra), ``num_queries`` = ``tgt_embed`` rows,
    ``share_pred_heads`` = every decoder layer's class and box heads hold equal values, ``denoising`` =
    a ``label_enc`` is present (it must have num_classes + 1 rows, the detres label book).
    ``nheads``: the sampling offsets have heads x levels x points x 2 rows, so shapes cannot tell heads
    from points; the official default 8 unless given.
    """
    if not is_official_dino({}, sd):
        raise ValueError("not an official DINO state dict: transformer.level_embed, input_proj.* or "
                         "transformer.tgt_embed.weight is missing")
    lv = read_levels(sd)
    dec_layers = max_index(sd, "transformer.decoder.layers.")
    num_classes = int(sd["class_embed.0.weight"].shape[0])
    book = sd.get("label_enc.weight")
    if book is not None and book.shape[0] != num_classes + 1:
        raise ValueError(f"label_enc.weight has {book.shape[0]} rows; detres' denoising label book has "
                         f"num_classes + 1 = {num_classes + 1} (dn_labelbook_size must equal num_classes)")
    return {
        "depth": resnet_depth(sd),
        "out_features": lv["out_features"],
        "num_extra_levels": lv["num_extra_levels"],
        "d_model": lv["d_model"],
        "nhead": nheads,
        "num_encoder_layers": max_index(sd, "transformer.encoder.layers."),
        "num_decoder_layers": dec_layers,
        "ffn_dim": read_ffn_dim(sd),
        "enc_n_points": deform_points(sd, "transformer.encoder.layers.0.self_attn", nheads, lv["levels"]),
        "dec_n_points": deform_points(sd, "transformer.decoder.layers.0.cross_attn", nheads, lv["levels"]),
        "num_queries": int(sd["transformer.tgt_embed.weight"].shape[0]),
        "num_classes": num_classes,
        "share_pred_heads": _shared(sd, "class_embed", dec_layers) and _shared(sd, "bbox_embed", dec_layers),
        "denoising": book is not None,
    }


#: the COCO recipe the written configs start from (training and data sections, input, losses)
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "dino.yaml"


def dino_config(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                num_queries: int | None = None) -> tuple[DictConfig, str]:
    """(config, header comment) of the detres ``DINO`` that holds the official state dict ``sd``: the
    architecture from ``read_dino_architecture``, everything else (input, training, data, denoising
    noise) from the COCO recipe ``configs/_base_/dino.yaml``. The config names no ``_base_``.
    ``num_queries`` (the CLI's ``--num-queries``) may only repeat ``tgt_embed``'s row count: DINO's
    content queries are learned per slot, so the count is fixed by the checkpoint."""
    arch = read_dino_architecture(sd, nheads=nheads)
    if num_queries is not None and num_queries != arch["num_queries"]:
        raise ValueError(f"--num-queries {num_queries}: transformer.tgt_embed.weight holds {arch['num_queries']} "
                         "learned content queries; leave --num-queries out for DINO")
    cfg = load_recipe(RECIPE)
    set_levels(cfg, arch)
    head = cfg.model.head
    head.num_queries = arch["num_queries"]
    head.share_pred_heads = arch["share_pred_heads"]
    for key in ("nhead", "num_encoder_layers", "num_decoder_layers", "ffn_dim", "enc_n_points", "dec_n_points"):
        head.transformer[key] = arch[key]
    if not arch["denoising"]:
        head.denoising = None
    drop_unavailable_loss_nodes(cfg)
    scale = f"{len(arch['out_features']) + arch['num_extra_levels']}-scale"
    header = "\n".join([
        "Written by `tools/convert.py --from dino`: an official DINO checkpoint's model.",
        f"Read from its tensors: ResNet-{arch['depth']}, {scale}: levels {arch['out_features']} + "
        f"{arch['num_extra_levels']} extra, d_model {arch['d_model']}, {arch['num_encoder_layers']} encoder / "
        f"{arch['num_decoder_layers']} decoder layers, FFN {arch['ffn_dim']}, points {arch['enc_n_points']} "
        f"(encoder) / {arch['dec_n_points']} (decoder), {arch['num_queries']} queries, {arch['num_classes']} "
        f"classes, share_pred_heads {arch['share_pred_heads']}, denoising label book "
        f"{'present' if arch['denoising'] else 'absent (denoising off)'}.",
        f"Assumed: nhead {nheads} (sampling_offsets rows = heads x levels x points x 2 cannot tell heads "
        "from points; --nheads), dilation off, dropout 0.0.",
        "Input, training, data and denoising noise: the COCO recipe of configs/_base_/dino.yaml.",
    ])
    return cfg, header
