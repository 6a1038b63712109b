"""Models: backbones, necks, heads and detectors; importing this fills their registries."""
from __future__ import annotations

from detres.modeling import backbones, detectors, heads, layers, necks  # noqa: F401
from detres.modeling.build import build_backbone_and_neck, build_model

__all__ = ["build_model", "build_backbone_and_neck"]
