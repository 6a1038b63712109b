"""Helpers for the Faster R-CNN tests: build a config's model node without its data section."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

import detres
from detres.config.validate import validate_node

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn"


def build_from_config(name: str, overrides: Sequence[str] = ()) -> nn.Module:
    """Build ``configs/faster_rcnn/<name>.yaml``'s model (validated against constructor signatures)."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    node = OmegaConf.to_container(cfg, resolve=True)["model"]
    validate_node(node, "model")
    return detres.build_model(node)
