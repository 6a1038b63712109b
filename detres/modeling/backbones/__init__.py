"""Backbones: ``forward(x) -> dict[str, Tensor]`` plus ``output_shape()`` and ``size_divisibility``."""
from __future__ import annotations

from detres.modeling.backbones.base import Backbone
from detres.modeling.backbones.resnet import ResNet
from detres.modeling.backbones.timm_backbone import TimmBackbone
from detres.modeling.backbones.torchvision_backbone import TorchvisionBackbone

__all__ = ["Backbone", "ResNet", "TimmBackbone", "TorchvisionBackbone"]
