"""Region Proposal Network: anchors, box coder, matcher, sampler, head and proposal selection."""
from __future__ import annotations

from detres.modeling.heads.rpn.anchor_generator import AnchorGenerator, cell_anchors
from detres.modeling.heads.rpn.box_coder import BoxCoder
from detres.modeling.heads.rpn.matcher import Matcher, sample_balanced
from detres.modeling.heads.rpn.rpn import RPN, RPNHead

__all__ = ["AnchorGenerator", "cell_anchors", "BoxCoder", "Matcher", "sample_balanced", "RPN", "RPNHead"]
