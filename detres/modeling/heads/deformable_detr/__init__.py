"""Deformable DETR (Zhu et al. 2021)."""
from __future__ import annotations

from detres.modeling.heads.deformable_detr.criterion import FocalSetCriterion

__all__ = ["FocalSetCriterion"]
