"""DINO (Zhang et al. 2023): contrastive denoising, mixed query selection, look-forward-twice decoder.

Built on Deformable DETR's encoder and layers (``detres.modeling.heads.deformable_detr``).
"""
from __future__ import annotations

from detres.modeling.heads.dino.criterion import DINOCriterion
from detres.modeling.layers.denoising import ContrastiveDenoising, DenoisingQueries, denoising_attn_mask
from detres.modeling.heads.dino.head import DINOHead
from detres.modeling.heads.dino.transformer import DINODecoder, DINORun, DINOTransformer

__all__ = ["DINOHead", "DINOCriterion", "DINOTransformer", "DINODecoder", "DINORun", "ContrastiveDenoising", "DenoisingQueries",
           "denoising_attn_mask"]
