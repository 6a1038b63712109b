"""ROI heads: multi-scale RoIAlign, box heads, box predictor, sampling, losses and inference."""
from __future__ import annotations

from detres.modeling.heads.roi_heads.box_head import BoxPredictor, ConvFCHead
from detres.modeling.heads.roi_heads.pooler import GatherRoIAlign, MultiScaleRoIAlign, assign_levels
from detres.modeling.heads.roi_heads.roi_heads import StandardROIHeads

__all__ = ["BoxPredictor", "ConvFCHead", "GatherRoIAlign", "MultiScaleRoIAlign", "assign_levels", "StandardROIHeads"]
