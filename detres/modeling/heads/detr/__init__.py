"""DETR (Carion et al. 2020): position encodings, transformer, Hungarian matcher, set criterion, head."""
from __future__ import annotations

from detres.modeling.heads.detr.criterion import SetCriterion
from detres.modeling.heads.detr.head import MLP, DETRHead
from detres.modeling.heads.detr.matcher import HungarianMatcher, assign
from detres.modeling.heads.detr.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from detres.modeling.heads.detr.transformer import Transformer

__all__ = [
    "DETRHead", "MLP", "Transformer", "HungarianMatcher", "assign", "SetCriterion",
    "PositionEmbeddingSine", "PositionEmbeddingLearned",
]
