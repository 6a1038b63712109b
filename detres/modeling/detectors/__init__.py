"""Detectors: each builds its children from their configs, passing shapes down."""
from __future__ import annotations

from detres.modeling.detectors.base import Detector, InputConfig

__all__ = ["Detector", "InputConfig"]
