"""Necks: built from the backbone's ``output_shape()``."""
from __future__ import annotations

from detres.modeling.necks.channel_mapper import ChannelMapper
from detres.modeling.necks.fpn import FPN

__all__ = ["FPN", "ChannelMapper"]
