"""Official RT-DETR / RT-DETRv2 checkpoints (lyuwenyu/RT-DETR, ``{"ema": {"module": sd}}``,
``{"model": sd}`` or a bare state dict) -> detres names, and the detres config of the model a
checkpoint holds, read from its tensors.

Key mapping (reference -> detres ``RTDETR``):

- ``backbone.*`` (``PResNet``, ResNet-vd) -> ``backbone.*`` renamed by ``convert_presnet``
- ``encoder.X`` (``HybridEncoder``) -> ``neck.X`` (same module names)
- ``decoder.denoising_class_embed.*`` -> ``head.denoising.label_enc.*``
- ``decoder.anchors`` / ``decoder.valid_mask`` are dropped: detres computes the anchors from the input
  size at run time (the stored buffers are only valid for the official ``eval_spatial_size``)
- ``decoder.*.cross_attn.num_points_scale`` is dropped after checking that it is 1/n for every point
  (the same n points on every level: detres' ``MSDeformAttn`` has no per-level point counts)
- ``decoder.enc_output.{0,1}.*`` (v1) -> ``head.transformer.enc_output.{proj,norm}.*``
- every other ``decoder.X`` -> ``head.transformer.X``
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from detres.checkpoint.deformable_layout import deform_points, drop_unavailable_loss_nodes, load_recipe, max_index
from detres.checkpoint.loader import Converter, register_converter
from detres.checkpoint.presnet import convert_presnet, presnet_resnet_args

logger = logging.getLogger(__name__)

__all__ = ["RECIPE", "convert_official_rtdetr", "is_official_rtdetr", "read_architecture", "rtdetr_config",
           "check_points_scale"]

DEFAULT_NHEADS = 8  # the official decoder's nhead; the tensors cannot tell heads from points
DEFAULT_NUM_QUERIES = 300  # the official num_queries; no tensor holds it
_DROPPED = ("decoder.anchors", "decoder.valid_mask")
_V1_ENC_OUTPUT = {"decoder.enc_output.0.": "decoder.enc_output.proj.", "decoder.enc_output.1.": "decoder.enc_output.norm."}


def is_official_rtdetr(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    """True for a state dict laid out as lyuwenyu/RT-DETR's ``RTDETR`` (``backbone.`` / ``encoder.`` /
    ``decoder.`` with the decoder's encoder-score head)."""
    return "decoder.enc_score_head.weight" in sd and any(k.startswith("encoder.input_proj.") for k in sd)


def _points_per_level(scale: torch.Tensor) -> list[int]:
    """The per-level point counts a ``num_points_scale`` buffer encodes (n entries of 1/n per level)."""
    counts, i, values = [], 0, scale.tolist()
    while i < len(values):
        n = max(1, round(1.0 / values[i])) if values[i] > 0 else 1
        counts.append(n)
        i += n
    return counts


def check_points_scale(sd: dict[str, torch.Tensor], levels: int) -> None:
    """Check every ``*.cross_attn.num_points_scale`` buffer: ``levels`` x n entries, all 1/n (equal
    points per level, the only layout detres' ``MSDeformAttn`` has). Raises ValueError naming the key."""
    for key, value in sd.items():
        if not key.endswith(".cross_attn.num_points_scale"):
            continue
        total = value.numel()
        n = total // levels if levels else 0
        if n == 0 or total % levels or not torch.allclose(value.float(), torch.full_like(value.float(), 1.0 / n)):
            raise ValueError(
                f"{key}: points per level {_points_per_level(value.float())} ({total} values over {levels} "
                "levels) are not equal; detres' MSDeformAttn samples the same number of points on every "
                "level, so this checkpoint (num_points with unequal entries) cannot be converted")


def convert_official_rtdetr(sd: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map an official RT-DETR state dict to detres ``RTDETR`` names (``model`` is not needed: the
    names are fixed). Raises ValueError for unequal per-level points or a non-PResNet backbone key."""
    check_points_scale(sd, max_index(sd, "decoder.input_proj."))
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in convert_presnet(backbone).items()}
    for key, value in sd.items():
        if key.startswith("backbone.") or key in _DROPPED or key.endswith(".cross_attn.num_points_scale"):
            continue
        for old, new in _V1_ENC_OUTPUT.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith("encoder."):
            out["neck." + key[len("encoder."):]] = value
        elif key.startswith("decoder.denoising_class_embed."):
            out["head.denoising.label_enc." + key[len("decoder.denoising_class_embed."):]] = value
        elif key.startswith("decoder."):
            out["head.transformer." + key[len("decoder."):]] = value
        else:
            out[key] = value  # not part of the official model: reported unused by the load
    return out


RTDETR_CONVERTER = register_converter(Converter("rtdetr", is_official_rtdetr, convert_official_rtdetr))


# ---- architecture from the tensors ----------------------------------------------------------------


def _rows(sd: dict[str, torch.Tensor], key: str) -> int:
    if key not in sd:
        raise ValueError(f"not an official RT-DETR state dict: {key} is missing")
    return int(sd[key].shape[0])


def _backbone_channels(depth: int, level: int) -> int:
    """Output channels of ResNet-``depth``'s stage ``res{level}``."""
    return 64 * 2 ** (level - 2) * (4 if depth >= 50 else 1)


def read_architecture(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                      num_queries: int | None = None) -> dict[str, Any]:
    """The architecture of an official RT-DETR state dict, read from its tensors.

    Returns ``{"backbone": presnet_resnet_args(...), "out_features", "version", "hidden_dim",
    "expansion", "depth_mult", "num_encoders", "num_encoder_layers", "dim_feedforward",
    "num_decoder_layers", "ffn_dim", "n_points", "nhead", "num_classes", "num_queries", "denoising"}``.
    ``nheads``: the official 8 unless given (sampling offsets have heads x levels x points x 2 rows);
    ``num_queries``: no tensor holds it, the official 300 unless given.
    """
    if not is_official_rtdetr(sd, sd):
        raise ValueError("not an official RT-DETR state dict: expected decoder.enc_score_head.weight and "
                         "encoder.input_proj.* keys")
    if "decoder.tgt_embed.weight" in sd:
        raise ValueError("decoder.tgt_embed.weight: learned query content (learn_query_content=True) is not "
                         "supported by detres' RTDETRTransformer; only the default (selected encoder features) is")
    bb = presnet_resnet_args({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")})
    levels = max_index(sd, "encoder.input_proj.")
    out_features = [f"res{6 - levels + i}" for i in range(levels)]
    version = "v2" if "encoder.input_proj.0.conv.weight" in sd else "v1"
    conv = "conv.weight" if version == "v2" else "0.weight"
    for i, name in enumerate(out_features):
        key, want = f"encoder.input_proj.{i}.{conv}", _backbone_channels(bb["depth"], int(name[3:]))
        if sd[key].shape[1] != want:
            raise ValueError(f"{key} takes {sd[key].shape[1]} channels, but {name} of ResNet-{bb['depth']} has {want}; "
                             "detres reads the encoder levels as the backbone's last ones (official return_idx [1, 2, 3])")
    hidden = _rows(sd, f"encoder.input_proj.0.{conv}")
    dec_levels = max_index(sd, "decoder.input_proj.")
    if dec_levels != levels:
        raise ValueError(f"decoder.input_proj has {dec_levels} levels, the encoder {levels}; extra decoder levels "
                         "(num_levels > len(feat_channels)) are not supported")
    if _rows(sd, "decoder.input_proj.0.conv.weight") != hidden:
        raise ValueError(f"decoder width {_rows(sd, 'decoder.input_proj.0.conv.weight')} != encoder hidden_dim {hidden}")
    num_classes = _rows(sd, "decoder.enc_score_head.weight")
    denoising = "decoder.denoising_class_embed.weight" in sd
    if denoising and _rows(sd, "decoder.denoising_class_embed.weight") != num_classes + 1:
        raise ValueError(f"decoder.denoising_class_embed.weight has {_rows(sd, 'decoder.denoising_class_embed.weight')} "
                         f"rows; expected num_classes + 1 = {num_classes + 1} (the label book with a padding row)")
    ffn = _rows(sd, "decoder.decoder.layers.0.linear1.weight")
    return {
        "backbone": bb,
        "out_features": out_features,
        "version": version,
        "hidden_dim": hidden,
        "expansion": _rows(sd, "encoder.fpn_blocks.0.conv1.conv.weight") / hidden,
        "depth_mult": max_index(sd, "encoder.fpn_blocks.0.bottlenecks.") / 3,
        "num_encoders": max_index(sd, "encoder.encoder."),
        "num_encoder_layers": max_index(sd, "encoder.encoder.0.layers."),
        "dim_feedforward": _rows(sd, "encoder.encoder.0.layers.0.linear1.weight") if "encoder.encoder.0.layers.0.linear1.weight" in sd else 1024,
        "num_decoder_layers": max_index(sd, "decoder.decoder.layers."),
        "ffn_dim": ffn,
        "n_points": deform_points(sd, "decoder.decoder.layers.0.cross_attn", nheads, levels),
        "nhead": nheads,
        "num_classes": num_classes,
        "num_queries": int(num_queries if num_queries is not None else DEFAULT_NUM_QUERIES),
        "denoising": denoising,
    }


#: the COCO recipe the written configs start from (input, training and data sections, losses)
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "rtdetr.yaml"


def _set_architecture(cfg: DictConfig, arch: dict[str, Any]) -> None:
    model = cfg.model
    cfg.num_classes = arch["num_classes"]
    for key, value in arch["backbone"].items():
        model.backbone[key] = value
    model.backbone.out_features = list(arch["out_features"])
    model.backbone.weights = None  # every weight comes from model.pth
    neck = model.neck
    neck.in_features = list(arch["out_features"])
    n = len(arch["out_features"])
    neck.use_encoder_idx = list(range(n - arch["num_encoders"], n))
    for key in ("hidden_dim", "expansion", "depth_mult", "num_encoder_layers", "dim_feedforward", "version"):
        neck[key] = arch[key]
    model.head.num_queries = arch["num_queries"]
    for key in ("nhead", "num_decoder_layers", "ffn_dim", "n_points"):
        model.head.transformer[key] = arch[key]
    if not arch["denoising"]:
        model.head.denoising = None


def rtdetr_config(sd: dict[str, torch.Tensor], nheads: int = DEFAULT_NHEADS,
                  num_queries: int | None = None) -> tuple[DictConfig, str]:
    """(config, header comment) of the detres ``RTDETR`` that holds the official state dict ``sd``: the
    architecture from ``read_architecture``, everything else (input, training, data) from the COCO
    recipe ``configs/_base_/rtdetr.yaml``. The config names no ``_base_``."""
    arch = read_architecture(sd, nheads=nheads, num_queries=num_queries)
    cfg = load_recipe(RECIPE)
    _set_architecture(cfg, arch)
    drop_unavailable_loss_nodes(cfg)
    bb = arch["backbone"]
    header = "\n".join([
        "Written by `tools/convert.py --from rtdetr`: an official RT-DETR checkpoint's model.",
        f"Read from its tensors: ResNet-{bb['depth']}-vd (norm {bb['norm']}), levels {arch['out_features']}, "
        f"HybridEncoder {arch['version']} width {arch['hidden_dim']}, expansion {arch['expansion']}, "
        f"{arch['num_encoder_layers']} AIFI layer(s) FFN {arch['dim_feedforward']}, {arch['num_decoder_layers']} "
        f"decoder layers FFN {arch['ffn_dim']}, {arch['n_points']} points per level, {arch['num_classes']} classes, "
        f"denoising {'on' if arch['denoising'] else 'off (no label book)'}.",
        f"Assumed: nhead {nheads} (--nheads), num_queries {arch['num_queries']} (no tensor holds it: "
        "--num-queries), AIFI on the last level(s), 8 encoder heads.",
        "Input, training and data sections: the COCO recipe of configs/_base_/rtdetr.yaml.",
    ])
    return cfg, header
