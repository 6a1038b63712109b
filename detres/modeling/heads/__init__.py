"""Detection heads: built with ``input_shape=neck.output_shape()``."""
from __future__ import annotations

from detres.modeling.heads.detr import DETRHead  # noqa: F401
from detres.modeling.heads.deformable_detr import DeformableDETRHead  # noqa: F401
from detres.modeling.heads.dino import DINOHead  # noqa: F401
from detres.modeling.heads.rtdetr import RTDETRHead  # noqa: F401

from detres.modeling.heads import deformable_detr, roi_heads, rpn  # noqa: F401
