"""DETR (Carion et al. 2020): position encodings, transformer, set criterion, head.

The Hungarian matcher and the box MLP are shared parts: ``detres.modeling.layers``.
"""
from __future__ import annotations

from detres.modeling.heads.detr.criterion import SetCriterion
from detres.modeling.heads.detr.head import DETRHead
from detres.modeling.heads.detr.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from detres.modeling.heads.detr.transformer import Transformer

__all__ = ["DETRHead", "Transformer", "SetCriterion", "PositionEmbeddingSine", "PositionEmbeddingLearned"]
