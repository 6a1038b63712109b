"""``build_model``: the one entry from a config to a detector."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from detres.registry import instantiate


def _check_backbone(module: Any, where: str) -> None:
    # Duck-typed on purpose: a user's backbone need not subclass ``Backbone``.
    missing = [a for a in ("forward", "output_shape") if not callable(getattr(module, a, None))]
    if missing:
        raise TypeError(
            f"{where}: {type(module).__name__} is not a backbone: it lacks {', '.join(missing)}(). A backbone "
            "returns dict[str, Tensor] from forward and dict[str, ShapeSpec] from output_shape() "
            "(subclass detres.modeling.backbones.Backbone to get both declared and size_divisibility)."
        )


def build_backbone_and_neck(backbone: Mapping[str, Any], neck: Mapping[str, Any] | None) -> tuple[nn.Module, nn.Module | None]:
    """Build a backbone node, then the neck node with ``input_shape=backbone.output_shape()``: the one
    place where a detector's backbone -> neck composition is written. ``neck`` None: no neck."""
    bb = instantiate(backbone)
    _check_backbone(bb, "model.backbone")
    nk = None
    if neck is not None:
        nk = instantiate(neck, input_shape=bb.output_shape())
        _check_backbone(nk, "model.neck")
    return bb, nk


def build_model(cfg: DictConfig | Mapping[str, Any]) -> nn.Module:
    """Build ``cfg.model`` (a full config or just its model node); returns the detector."""
    node = cfg
    if isinstance(cfg, DictConfig):
        node = OmegaConf.to_container(cfg, resolve=True)
    if "model" in node:
        node = node["model"]
    return instantiate(node)
