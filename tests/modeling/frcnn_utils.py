"""Helpers for the Faster R-CNN tests: build a config's model node without its data section."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

import detres

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn"


def build_from_config(name: str, overrides: Sequence[str] = ()) -> nn.Module:
    """Build ``configs/faster_rcnn/<name>.yaml``'s model (with its ``_base_`` parents, validated
    against constructor signatures) after the ``key=value`` overrides."""
    return detres.build_model(detres.load_config(CONFIG_DIR / f"{name}.yaml", list(overrides)))
