"""RT-DETR (Zhao et al. 2024): hybrid encoder, IoU-aware query selection, varifocal set criterion.

Shared parts (Hungarian matchers, varifocal and box losses, deformable attention) live in
``detres.modeling.layers``.
"""
from __future__ import annotations

from detres.modeling.heads.rtdetr.criterion import RTDETRCriterion

__all__ = ["RTDETRCriterion"]
