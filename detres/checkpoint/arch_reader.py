"""Helpers shared by the converters that read a model's architecture from an official state dict's
tensors and write a self-contained detres config (``deformable_detr``, ``rtdetr``): counting indexed
modules, deformable-attention points from the sampling-offset rows, and the recipe the written config
starts from."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from detres.registry import locate

logger = logging.getLogger(__name__)

__all__ = ["max_index", "deform_points", "load_recipe", "drop_unavailable_loss_nodes"]


def max_index(sd: dict[str, Any], prefix: str) -> int:
    """1 + the largest ``N`` of the keys ``{prefix}N.*`` (0 when there are none)."""
    idx = [int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)]
    return max(idx) + 1 if idx else 0


def deform_points(sd: dict[str, torch.Tensor], attn: str, nheads: int, levels: int) -> int:
    """Sampling points per head and level of the deformable attention ``attn`` (a key prefix): its
    ``sampling_offsets`` have heads x levels x points x 2 rows, ``attention_weights`` half as many.

    Raises ValueError (naming the key and ``--nheads``) when the rows do not divide."""
    rows = sd[f"{attn}.sampling_offsets.weight"].shape[0]
    per = nheads * levels * 2
    if rows % per or sd[f"{attn}.attention_weights.weight"].shape[0] * 2 != rows:
        raise ValueError(f"{attn}.sampling_offsets.weight has {rows} rows, not heads ({nheads}) x levels "
                         f"({levels}) x points x 2; pass the checkpoint's number of heads as --nheads")
    return rows // per


def load_recipe(path: Path, what: str) -> DictConfig:
    """The recipe config at ``path`` (the written config's training / data / input sections); it must
    name no ``_base_`` so that the written config is self-contained."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {what} recipe the written config starts from is missing")
    cfg = OmegaConf.load(path)
    if "_base_" in cfg:
        raise ValueError(f"{path} names a _base_; the converter needs a self-contained recipe")
    return cfg


def drop_unavailable_loss_nodes(cfg: DictConfig) -> None:
    """Leave out the recipe's matcher / criterion nodes when this detres does not have their classes
    (the model then builds inference-only, ``criterion=None``)."""
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
