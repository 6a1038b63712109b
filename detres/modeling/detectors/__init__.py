"""Detectors: each builds its children from their configs, passing shapes down."""
from __future__ import annotations

from detres.modeling.detectors.base import Detector, GraphSpec, InputConfig, TracedCall
from detres.modeling.detectors.faster_rcnn import FasterRCNN  # noqa: F401
from detres.modeling.detectors.detr import DETR  # noqa: F401
from detres.modeling.detectors.deformable_detr import DeformableDETR  # noqa: F401
from detres.modeling.detectors.dino import DINO  # noqa: F401
from detres.modeling.detectors.rtdetr import RTDETR  # noqa: F401

__all__ = ["Detector", "GraphSpec", "InputConfig", "TracedCall"]
