"""RT-DETR (Zhao et al. 2024) / RT-DETRv2 (Lv et al. 2024): query selection and decoder, head.

The hybrid encoder is a neck (``detres.modeling.necks.HybridEncoder``); multi-scale deformable
attention and contrastive denoising are shared parts (``detres.modeling.layers``).
"""
from __future__ import annotations

from detres.modeling.heads.rtdetr.head import RTDETRHead
from detres.modeling.heads.rtdetr.transformer import RTDETRDecoderLayer, RTDETRRun, RTDETRTransformer, grid_anchors

__all__ = ["RTDETRHead", "RTDETRTransformer", "RTDETRDecoderLayer", "RTDETRRun", "grid_anchors"]
