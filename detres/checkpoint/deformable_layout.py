"""What the official multi-scale deformable DETRs (fundamentalvision/Deformable-DETR, IDEA-Research/DINO)
have in common in their checkpoints, for their converters (``deformable_detr``, ``dino``; ``rtdetr`` uses
the generic readers: ``max_index``, ``deform_points``, ``load_recipe``, ``drop_unavailable_loss_nodes``):

- a torchvision ResNet under ``backbone.0.body.*`` (depth read from the block counts),
- ``input_proj.{i}.{0: conv, 1: GroupNorm}`` per level: 1x1 convs on the backbone levels, then 3x3
  stride-2 convs for the extra levels (detres ``ChannelMapper``: ``neck.convs`` / ``neck.extra_convs``),
- ``transformer.level_embed`` [levels, d_model], MSDeformAttn layers whose sampling offsets have
  heads x levels x points x 2 rows,
- class heads of 91 sigmoid logits indexed by COCO category id (no no-object column),
- ``transformer.decoder.{class,bbox}_embed.*``: the head's modules listed a second time (``unique_entries``
  folds them).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS
from detres.registry import locate

logger = logging.getLogger(__name__)

__all__ = ["NUM_RAW_COCO_SLOTS", "DEFAULT_NHEADS", "DECODER_DUPLICATES", "DINO_ONLY_KEYS", "has_deformable_layout",
           "num_backbone_levels", "map_backbone_or_input_proj", "remap_class_rows", "check_duplicates",
           "max_index", "resnet_depth", "deform_points", "read_levels", "read_ffn_dim", "load_recipe", "set_levels",
           "drop_unavailable_loss_nodes"]

NUM_RAW_COCO_SLOTS = 91  # the official num_classes for COCO: max category id + 1
DEFAULT_NHEADS = 8  # the official --nheads; the tensors cannot tell heads from points

#: the decoder's copies of the head's refinement modules (same modules, listed twice by the reference)
DECODER_DUPLICATES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
#: keys only official DINO has (learned content queries, the denoising label book)
DINO_ONLY_KEYS = ("transformer.tgt_embed.weight", "label_enc.weight")
_INPUT_PROJ = re.compile(r"input_proj\.(\d+)\.(.*)")
#: ResNet block counts of layer1..4 -> depth; basic blocks (no conv3) for 18 / 34
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


def has_deformable_layout(sd: dict[str, Any]) -> bool:
    """True when ``sd`` has the official deformable-DETR family layout (level embedding + input_proj)."""
    return "transformer.level_embed" in sd and any(k.startswith("input_proj.") for k in sd)


def num_backbone_levels(own: dict[str, torch.Tensor]) -> int:
    """Backbone levels (1x1 projections) of a detres model's ``ChannelMapper`` neck, from its state dict."""
    return len({k.split(".")[2] for k in own if k.startswith("neck.convs.")})


def map_backbone_or_input_proj(key: str, n_backbone: int) -> str | None:
    """The detres name of an official backbone / input_proj key (``n_backbone``: the model's backbone
    levels), or None for any other key."""
    if key.startswith("backbone.0.body."):
        return "backbone." + key[len("backbone.0.body."):]
    m = _INPUT_PROJ.fullmatch(key)
    if m is None:
        return None
    i = int(m.group(1))
    return f"neck.convs.{i}.{m.group(2)}" if i < n_backbone else f"neck.extra_convs.{i - n_backbone}.{m.group(2)}"


def remap_class_rows(name: str, t: torch.Tensor, own: dict[str, torch.Tensor], trailing: int = 0) -> torch.Tensor | None:
    """The rows of a per-class tensor (``name``: its detres key) that fit the model.

    ``t`` has the 91 COCO-id rows, then ``trailing`` extra rows (e.g. DINO's label book padding entry).
    Same row count as the model: unchanged; a model of 80 classes: the rows of the 80 COCO ids in
    contiguous order, then the trailing rows; any other count: None with a warning (left out, random
    init for fine-tuning)."""
    want = own.get(name)
    if want is None or want.shape[0] == t.shape[0]:
        return t
    if t.shape[0] == NUM_RAW_COCO_SLOTS + trailing and want.shape[0] == len(COCO_CATEGORY_IDS) + trailing:
        rows = [*COCO_CATEGORY_IDS, *range(NUM_RAW_COCO_SLOTS, NUM_RAW_COCO_SLOTS + trailing)]
        return t[torch.tensor(rows)]
    logger.warning("%s: checkpoint has %d class rows, model %d; left out (random init) for fine-tuning",
                   name, t.shape[0], want.shape[0])
    return None


def check_duplicates(sd: dict[str, torch.Tensor]) -> None:
    """Warn when a ``transformer.decoder.{class,bbox}_embed`` copy differs from the key it duplicates."""
    for key, value in sd.items():
        if not key.startswith(DECODER_DUPLICATES):
            continue
        main = key[len("transformer.decoder."):]
        if main in sd and (sd[main].shape != value.shape or not torch.equal(sd[main], value)):
            logger.warning("%s differs from %s, which it duplicates in the reference model; %s is loaded",
                           key, main, main)


def unique_entries(sd: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """``sd``'s (key, tensor) pairs with the ``transformer.decoder.{class,bbox}_embed`` duplicates
    folded: a copy whose head key is present is skipped (after ``check_duplicates`` warns where they
    differ); a copy alone is yielded under the head's key."""
    check_duplicates(sd)
    for key, value in sd.items():
        if key.startswith(DECODER_DUPLICATES):
            main = key[len("transformer.decoder."):]
            if main in sd:
                continue
            key = main
        yield key, value


def max_index(sd: dict[str, Any], prefix: str) -> int:
    """1 + the largest ``N`` of the keys ``{prefix}N.*`` (0 when there are none)."""
    idx = [int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)]
    return max(idx) + 1 if idx else 0


def resnet_depth(sd: dict[str, torch.Tensor]) -> int:
    """ResNet depth of the ``backbone.0.body.*`` tensors (block counts per stage, bottleneck or basic)."""
    blocks = tuple(max_index(sd, f"backbone.0.body.layer{j}.") for j in range(1, 5))
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in sd
    depth = _DEPTHS.get((blocks, bottleneck))
    if depth is None:
        raise ValueError(f"backbone.0.body: ResNet blocks per stage {list(blocks)} "
                         f"({'bottleneck' if bottleneck else 'basic'}) match no ResNet-18/34/50/101/152")
    return depth


def deform_points(sd: dict[str, torch.Tensor], attn: str, nheads: int, levels: int) -> int:
    """Sampling points per head and level of the MSDeformAttn module ``attn`` (a key prefix)."""
    rows = sd[f"{attn}.sampling_offsets.weight"].shape[0]
    per = nheads * levels * 2
    if rows % per or sd[f"{attn}.attention_weights.weight"].shape[0] * 2 != rows:
        raise ValueError(f"{attn}.sampling_offsets.weight has {rows} rows, not heads ({nheads}) x levels "
                         f"({levels}) x points x 2; pass the checkpoint's number of heads as --nheads")
    return rows // per


def read_levels(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``{"levels", "d_model", "out_features", "num_extra_levels"}`` from ``transformer.level_embed``
    and the input projections (1x1 convs: backbone levels, ending at res5; the rest: extra levels)."""
    levels, d_model = sd["transformer.level_embed"].shape
    n_proj = max_index(sd, "input_proj.")
    if n_proj != levels:
        raise ValueError(f"transformer.level_embed has {levels} rows but there are {n_proj} input_proj entries")
    n_backbone = sum(sd[f"input_proj.{i}.0.weight"].shape[-1] == 1 for i in range(n_proj))
    return {"levels": int(levels), "d_model": int(d_model),
            "out_features": [f"res{5 - i}" for i in reversed(range(n_backbone))],
            "num_extra_levels": int(levels - n_backbone)}


def read_ffn_dim(sd: dict[str, torch.Tensor]) -> int:
    """The FFN width, equal in encoder and decoder (detres has one ``ffn_dim``)."""
    ffn = sd["transformer.encoder.layers.0.linear1.weight"].shape[0]
    dec = sd["transformer.decoder.layers.0.linear1.weight"].shape[0]
    if dec != ffn:
        raise ValueError(f"encoder FFN width {ffn} != decoder's {dec}; detres has one ffn_dim")
    return int(ffn)


def load_recipe(path: Path) -> DictConfig:
    """The COCO recipe a written config starts from (it must name no ``_base_``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the recipe the written config starts from is missing")
    cfg = OmegaConf.load(path)
    if "_base_" in cfg:
        raise ValueError(f"{path} names a _base_; the converter needs a self-contained recipe")
    return cfg


def set_levels(cfg: DictConfig, arch: dict[str, Any]) -> None:
    """Write ``num_classes``, the ResNet depth, its output levels and the neck (``ChannelMapper``) of
    ``arch`` (keys "num_classes", "depth", "out_features", "d_model", "num_extra_levels") into ``cfg``."""
    cfg.num_classes = arch["num_classes"]
    cfg.model.backbone.depth = arch["depth"]
    cfg.model.backbone.out_features = list(arch["out_features"])
    cfg.model.neck.in_features = list(arch["out_features"])
    cfg.model.neck.out_channels = arch["d_model"]
    cfg.model.neck.num_extra_levels = arch["num_extra_levels"]


def drop_unavailable_loss_nodes(cfg: DictConfig) -> None:
    """Leave out the recipe's matcher / criterion nodes when this detres does not have their classes
    (the model then builds inference-only: the head with ``criterion=None``)."""
    for key in ("matcher", "criterion"):
        node = cfg.model.head.get(key)
        if node is None:
            continue
        try:
            locate(node["_target_"])
        except KeyError:
            logger.warning("model.head.%s: %s is not available; the written config is inference-only",
                           key, node["_target_"])
            del cfg.model.head[key]
