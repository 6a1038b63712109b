"""ShapeSpec: what a feature map carries, so necks and heads never take channel counts by hand."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (input pixels per feature cell) of one named feature map."""

    channels: int
    stride: int
