"""Weights loading for every supported layout: detres, torchvision, timm, detectron2, official DETR,
official Deformable DETR and official DINO and official RT-DETR / RT-DETRv2.

Converters register with ``register_converter``; ``load_checkpoint`` picks the first whose
``detect`` accepts the file, maps its keys to detres names and loads them with a report.
"""
from __future__ import annotations

from detres.checkpoint.loader import (
    Converter,
    LoadReport,
    convert_state_dict,
    load_backbone_weights,
    load_checkpoint,
    register_converter,
)
from detres.checkpoint import detr  # noqa: F401  (registers the "detr" converter)
from detres.checkpoint import detectron2, torchvision_frcnn  # noqa: F401  (register their converters)
from detres.checkpoint import deformable_detr  # noqa: F401  (registers the "deformable_detr" converter)
from detres.checkpoint import dino  # noqa: F401  (registers the "dino" converter)
from detres.checkpoint import rtdetr  # noqa: F401  (registers the "rtdetr" converter)

__all__ = ["Converter", "LoadReport", "load_checkpoint", "load_backbone_weights", "register_converter", "convert_state_dict"]
