"""Optimizer from a config node, with parameter groups.

Each trainable parameter gets an LR multiplier and a weight decay:

- parameters under ``backbone.`` get ``backbone_lr_mult`` (DETR trains its backbone at 0.1x);
- parameters of normalization layers get ``weight_decay_norm`` and biases ``weight_decay_bias``
  (None = the optimizer's weight decay), as detectron2 does;
- ``param_name_lr_mult: {part: lr_mult}`` sets the LR multiplier of parameters whose name contains
  ``part`` (Deformable DETR trains ``sampling_offsets`` and ``reference_points`` at 0.1x); a part set
  to None is dropped, so a config can remove one its ``_base_`` sets (the two-stage model has no
  ``reference_points`` layer);
- ``param_overrides: {prefix: {lr_mult, weight_decay}}`` wins over both for names starting with
  ``prefix`` (the longest matching prefix), e.g. ``{"head.query_embed": {weight_decay: 0.0}}``.

Parameters with equal (lr, weight_decay) share one group, so optimizers stay small.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["NORM_TYPES", "build_param_groups", "build_optimizer"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_OVERRIDE_KEYS = {"lr_mult", "weight_decay"}


def _norm_param_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for mod_name, mod in model.named_modules():
        is_norm = isinstance(mod, NORM_TYPES) or "norm" in type(mod).__name__.lower()
        if is_norm:
            for p_name, _ in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    *,
    backbone_lr_mult: float = 1.0,
    weight_decay_norm: float | None = 0.0,
    weight_decay_bias: float | None = None,
    param_overrides: Mapping[str, Mapping[str, float]] | None = None,
    param_name_lr_mult: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Param groups ``[{"params", "lr", "weight_decay", "names"}, ...]`` of ``model``'s trainable parameters.

    Raises ValueError for an override prefix that matches no parameter or has unknown keys.
    """
    overrides = dict(param_overrides or {})
    for prefix, ov in overrides.items():
        bad = set(ov) - _OVERRIDE_KEYS
        if bad:
            raise ValueError(
                f"train.param_overrides['{prefix}']: unknown keys {sorted(bad)}; use {sorted(_OVERRIDE_KEYS)}."
            )
    name_mults = {str(k): float(v) for k, v in (param_name_lr_mult or {}).items() if v is not None}
    used: set[str] = set()
    used_parts: set[str] = set()
    norm_names = _norm_param_names(model)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lr_mult = backbone_lr_mult if name.startswith("backbone.") else 1.0
        parts = [k for k in name_mults if k in name]
        if parts:
            used_parts.add(parts[0])
            lr_mult = name_mults[parts[0]]
        wd = weight_decay
        if name in norm_names and weight_decay_norm is not None:
            wd = weight_decay_norm
        elif name.endswith(".bias") and weight_decay_bias is not None:
            wd = weight_decay_bias
        matches = [k for k in overrides if name == k or name.startswith(k.rstrip(".") + ".")]
        if matches:
            key = max(matches, key=len)
            used.add(key)
            lr_mult = float(overrides[key].get("lr_mult", lr_mult))
            wd = float(overrides[key].get("weight_decay", wd))
        g = groups.setdefault((base_lr * lr_mult, wd), {"params": [], "lr": base_lr * lr_mult, "weight_decay": wd, "names": []})
        g["params"].append(p)
        g["names"].append(name)
    unused = [k for k in name_mults if k not in used_parts]
    if unused:
        raise ValueError(
            f"train.param_name_lr_mult: {unused} occur in no trainable parameter name; names look like "
            f"{', '.join(n for n, _ in list(model.named_parameters())[:3])}, ..."
        )
    unused = [k for k in overrides if k not in used]
    if unused:
        raise ValueError(
            f"train.param_overrides: {unused} match no trainable parameter name; names look like "
            f"{', '.join(n for n, _ in list(model.named_parameters())[:3])}, ..."
        )
    if not groups:
        raise ValueError("the model has no trainable parameter (everything frozen?); check freeze_at and the config")
    return list(groups.values())


def build_optimizer(node: Mapping[str, Any], model: nn.Module, train_cfg: Mapping[str, Any] | None = None) -> Optimizer:
    """Build an ``optimizer:`` node (``_target_``: ``torch.optim.SGD``, ``torch.optim.AdamW`` or any dotted
    path; ``lr``, ``weight_decay`` and the optimizer's own keys) over ``model``'s param groups.

    ``train_cfg`` supplies ``backbone_lr_mult``, ``weight_decay_norm``, ``weight_decay_bias``,
    ``param_name_lr_mult`` and ``param_overrides``.
    """
    from detres.registry import instantiate, locate

    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not node or "_target_" not in node:
        raise ValueError("optimizer: missing _target_ (e.g. torch.optim.SGD or torch.optim.AdamW) in the config.")
    if "lr" not in node:
        raise ValueError(f"optimizer: missing 'lr' for {node['_target_']}; add `lr: ...` under optimizer.")
    node = dict(node)
    for key in ("lr", "weight_decay", "momentum", "eps"):  # PyYAML reads `1e-4` (no dot) as a string
        if isinstance(node.get(key), str):
            try:
                node[key] = float(node[key])
            except ValueError:
                raise ValueError(f"optimizer.{key}: expected a number, got {node[key]!r}") from None
    tc = dict(train_cfg or {})
    groups = build_param_groups(
        model, float(node["lr"]), float(node.get("weight_decay", 0.0)),
        backbone_lr_mult=float(tc.get("backbone_lr_mult", 1.0)),
        weight_decay_norm=tc.get("weight_decay_norm", 0.0),
        weight_decay_bias=tc.get("weight_decay_bias", None),
        param_overrides=tc.get("param_overrides") or {},
        param_name_lr_mult=tc.get("param_name_lr_mult") or {},
    )
    locate(node["_target_"])  # fail early with the registry's message
    return instantiate(dict(node), params=groups)
