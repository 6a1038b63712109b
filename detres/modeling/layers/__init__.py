"""Parts shared by several heads; importing this fills the LAYERS registry."""
from __future__ import annotations

from detres.modeling.layers.hungarian_matcher import HungarianMatcher, assign
from detres.modeling.layers.mlp import MLP

__all__ = ["HungarianMatcher", "assign", "MLP"]
