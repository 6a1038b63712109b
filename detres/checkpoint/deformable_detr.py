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

import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from detres.checkpoint.arch_reader import deform_points as _points
from detres.checkpoint.arch_reader import drop_unavailable_loss_nodes as _drop_unavailable_loss_nodes
from detres.checkpoint.arch_reader import load_recipe
from detres.checkpoint.arch_reader import max_index as _max_index
from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS
from detres.checkpoint.loader import Converter, register_converter

logger = logging.getLogger(__name__)

NUM_RAW_COCO_SLOTS = 91  # the official num_classes for COCO: max category id + 1
DEFAULT_NHEADS = 8  # the official --nheads; the tensors cannot tell heads from points
DEFAULT_TWO_STAGE_QUERIES = 300  # the official --num_queries; a two-stage checkpoint has no query tensor

_DUPLICATES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
_INPUT_PROJ = re.compile(r"input_proj\.(\d+)\.(.*)")
#: ResNet block counts of layer1..4 -> depth; basic blocks (no conv3) for 18 / 34
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


def is_official_deformable_detr(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a state dict laid out as fundamentalvision/Deformable-DETR's ``DeformableDETR``."""
    return "transformer.level_embed" in sd and any(k.startswith("input_proj.") for k in sd)


def _num_backbone_levels(own: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[2] for k in own if k.startswith("neck.convs.")})


def _remap_classes(name: str, t: torch.Tensor, own: dict[str, torch.Tensor]) -> torch.Tensor | None:
    want = own.get(name)
    if want is None or want.shape[0] == t.shape[0]:
        return t
    if t.shape[0] == NUM_RAW_COCO_SLOTS and want.shape[0] == len(COCO_CATEGORY_IDS):
        return t[torch.tensor(COCO_CATEGORY_IDS)]
    logger.warning(
        "%s: checkpoint has %d class logits, model %d; left out (random init) for fine-tuning",
        name, t.shape[0], want.shape[0],
    )
    return None


def _check_duplicates(sd: dict[str, torch.Tensor]) -> None:
    """Warn when a ``transformer.decoder.{class,bbox}_embed`` copy differs from the key it duplicates."""
    for key, value in sd.items():
        if not key.startswith(_DUPLICATES):
            continue
        main = key[len("transformer.decoder."):]
        if main in sd and (sd[main].shape != value.shape or not torch.equal(sd[main], value)):
            logger.warning("%s differs from %s, which it duplicates in the reference model; %s is loaded",
                           key, main, main)


def convert_official_deformable_detr(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official Deformable-DETR state dict to ``model``'s (a detres ``DeformableDETR``) names."""
    own = model.state_dict()
    n_backbone = _num_backbone_levels(own)
    _check_duplicates(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_DUPLICATES):
            main = key[len("transformer.decoder."):]
            if main in sd:
                continue
            key = main  # only the decoder's copy is present: load it as the head's
        if key.startswith("backbone.0.body."):
            new = "backbone." + key[len("backbone.0.body."):]
        elif (m := _INPUT_PROJ.fullmatch(key)) is not None:
            i = int(m.group(1))
            new = f"neck.convs.{i}.{m.group(2)}" if i < n_backbone else f"neck.extra_convs.{i - n_backbone}.{m.group(2)}"
        else:
            new = "head." + key
        if new.startswith("head.class_embed."):
            value = _remap_classes(new, value, own)
            if value is None:
                continue
        out[new] = value
    return out


DEFORMABLE_DETR_CONVERTER = register_converter(
    Converter("deformable_detr", is_official_deformable_detr, convert_official_deformable_detr))


# ---- architecture from the tensors ----------------------------------------------------------------


def _resnet_depth(sd: dict[str, torch.Tensor]) -> int:
    blocks = tuple(_max_index(sd, f"backbone.0.body.layer{j}.") for j in range(1, 5))
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in sd
    depth = _DEPTHS.get((blocks, bottleneck))
    if depth is None:
        raise ValueError(f"backbone.0.body: ResNet blocks per stage {list(blocks)} "
                         f"({'bottleneck' if bottleneck else 'basic'}) match no ResNet-18/34/50/101/152")
    return depth


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
    levels, d_model = sd["transformer.level_embed"].shape
    n_proj = _max_index(sd, "input_proj.")
    if n_proj != levels:
        raise ValueError(f"transformer.level_embed has {levels} rows but there are {n_proj} input_proj entries")
    n_backbone = sum(sd[f"input_proj.{i}.0.weight"].shape[-1] == 1 for i in range(n_proj))
    two_stage = "transformer.enc_output.weight" in sd
    if not two_stage:
        num_queries = sd["query_embed.weight"].shape[0]
    ffn = sd["transformer.encoder.layers.0.linear1.weight"].shape[0]
    if sd["transformer.decoder.layers.0.linear1.weight"].shape[0] != ffn:
        raise ValueError(f"encoder FFN width {ffn} != decoder's "
                         f"{sd['transformer.decoder.layers.0.linear1.weight'].shape[0]}; detres has one ffn_dim")
    enc_layers = _max_index(sd, "transformer.encoder.layers.")
    dec_layers = _max_index(sd, "transformer.decoder.layers.")
    return {
        "depth": _resnet_depth(sd),
        "out_features": [f"res{5 - i}" for i in reversed(range(n_backbone))],
        "num_extra_levels": int(levels - n_backbone),
        "d_model": int(d_model),
        "nhead": nheads,
        "num_encoder_layers": enc_layers,
        "num_decoder_layers": dec_layers,
        "ffn_dim": int(ffn),
        "enc_n_points": _points(sd, "transformer.encoder.layers.0.self_attn", nheads, levels),
        "dec_n_points": _points(sd, "transformer.decoder.layers.0.cross_attn", nheads, levels),
        "num_queries": int(num_queries if num_queries is not None else DEFAULT_TWO_STAGE_QUERIES),
        "num_classes": int(sd["class_embed.0.weight"].shape[0]),
        "with_box_refine": any(k.startswith("transformer.decoder.bbox_embed.") for k in sd),
        "two_stage": two_stage,
    }


#: the COCO recipe the written configs start from (training and data sections, input, losses)
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "deformable_detr.yaml"


def _set_architecture(cfg: DictConfig, arch: dict[str, Any]) -> None:
    model = cfg.model
    cfg.num_classes = arch["num_classes"]
    model.backbone.depth = arch["depth"]
    model.backbone.out_features = list(arch["out_features"])
    model.neck.in_features = list(arch["out_features"])
    model.neck.out_channels = arch["d_model"]
    model.neck.num_extra_levels = arch["num_extra_levels"]
    for key in ("num_queries", "with_box_refine", "two_stage"):
        model.head[key] = arch[key]
    for key in ("nhead", "num_encoder_layers", "num_decoder_layers", "ffn_dim", "enc_n_points", "dec_n_points"):
        model.head.transformer[key] = arch[key]


def deformable_detr_config(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                           num_queries: int | None = None) -> tuple[DictConfig, str]:
    """(config, header comment) of the detres ``DeformableDETR`` that holds the official state dict
    ``sd``: the architecture from ``read_architecture``, everything else (input, training, data) from
    the COCO recipe ``configs/_base_/deformable_detr.yaml``. The config names no ``_base_``."""
    arch = read_architecture(sd, nheads=nheads, num_queries=num_queries)
    cfg = load_recipe(RECIPE, "Deformable DETR")
    _set_architecture(cfg, arch)
    _drop_unavailable_loss_nodes(cfg)
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
