"""Deformable DETR (Zhu et al. 2021): deformable transformer, focal set criterion, head.

Multi-scale deformable attention, the Hungarian matchers and the box MLP are shared parts:
``detres.modeling.layers``.
"""
from __future__ import annotations

from detres.modeling.heads.deformable_detr.criterion import FocalSetCriterion
from detres.modeling.heads.deformable_detr.head import DeformableDETRHead
from detres.structures.boxes import inverse_sigmoid
from detres.modeling.heads.deformable_detr.transformer import DecoderRun, DeformableTransformer

__all__ = ["DeformableDETRHead", "DeformableTransformer", "DecoderRun", "FocalSetCriterion", "inverse_sigmoid"]
