"""Box-aware OpenCV transforms, registered in TRANSFORMS: ``t(data: DetData, rng) -> DetData``."""
from __future__ import annotations

from detres.data.transforms.base import Compose, DetData, RandomSelect, Transform
from detres.data.transforms.color import ColorJitter
from detres.data.transforms.ssd import RandomIoUCrop, RandomPhotometricDistort, RandomZoomOut, SanitizeBoxes
from detres.data.transforms.geometric import (
    LargeScaleJitter, RandomFlip, RandomSizeCrop, Resize, ResizeShortestEdge, crop, hflip, resize, shortest_edge_size,
)

__all__ = [
    "DetData", "Transform", "Compose", "RandomSelect", "Resize", "ResizeShortestEdge", "RandomFlip", "RandomSizeCrop",
    "LargeScaleJitter", "ColorJitter", "RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop", "SanitizeBoxes",
    "resize", "crop", "hflip", "shortest_edge_size",
]
