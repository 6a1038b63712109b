"""Region Proposal Network: anchors, head and proposal selection (box coder, matcher and sampler
live in ``detres.modeling.layers``)."""
from __future__ import annotations

from detres.modeling.heads.rpn.anchor_generator import AnchorGenerator, cell_anchors
from detres.modeling.heads.rpn.rpn import RPN, RPNHead

__all__ = ["AnchorGenerator", "cell_anchors", "RPN", "RPNHead"]
