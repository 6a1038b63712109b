"""Necks: built from the backbone's ``output_shape()``."""
from __future__ import annotations

from detres.modeling.necks.channel_mapper import ChannelMapper
from detres.modeling.necks.fpn import FPN
from detres.modeling.necks.hybrid_encoder import HybridEncoder

__all__ = ["FPN", "ChannelMapper", "HybridEncoder"]
