"""RT-DETR (Zhao et al. 2024) / RT-DETRv2 (Lv et al. 2024): query selection and decoder, varifocal set
criterion, head.

The hybrid encoder is a neck (``detres.modeling.necks.HybridEncoder``); multi-scale deformable
attention, contrastive denoising, the Hungarian matchers and the varifocal / box losses are shared
parts (``detres.modeling.layers``).
"""
from __future__ import annotations

from detres.modeling.heads.rtdetr.criterion import RTDETRCriterion
from detres.modeling.heads.rtdetr.head import RTDETRHead
from detres.modeling.heads.rtdetr.transformer import RTDETRDecoderLayer, RTDETRRun, RTDETRTransformer, grid_anchors

__all__ = ["RTDETRHead", "RTDETRCriterion", "RTDETRTransformer", "RTDETRDecoderLayer", "RTDETRRun", "grid_anchors"]
