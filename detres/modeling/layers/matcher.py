"""IoU matcher with low-quality matches (Ren et al. 2015, Sec. 3.1.2)."""
from __future__ import annotations

import torch
from torch import Tensor

from detres.registry import LAYERS

#: Match labels: ignored (between the thresholds), negative (below ``low``), positive.
IGNORE, NEGATIVE, POSITIVE = -1, 0, 1


@LAYERS.register()
class Matcher:
    """Assigns each prediction (anchor / proposal) its best ground truth and a label.

    Labels: IoU < low -> 0 (negative); low <= IoU < high -> -1 (ignored); IoU >= high -> 1.
    ``allow_low_quality_matches`` also makes positive every prediction whose IoU with some ground
    truth equals that ground truth's best IoU (Ren et al. 2015, Sec. 3.1.2, condition (i)).

    Args:
        high: IoU at or above which a prediction is positive (RPN 0.7, ROI heads 0.5).
        low: IoU below which a prediction is negative (RPN 0.3, ROI heads 0.5).
        allow_low_quality_matches: the RPN's condition (i) above (both references: RPN only).
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise ValueError(f"matcher low threshold {low} > high threshold {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches

    def __repr__(self) -> str:
        return f"Matcher(high={self.high}, low={self.low}, allow_low_quality_matches={self.allow_low_quality_matches})"

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """[G, N] IoU -> (matched gt index [N] int64, label [N] int8 in {-1, 0, 1})."""
        n = iou.shape[1]
        if iou.shape[0] == 0:
            return iou.new_zeros(n, dtype=torch.int64), iou.new_full((n,), NEGATIVE, dtype=torch.int8)
        vals, idx = iou.max(dim=0)
        labels = torch.full((n,), POSITIVE, dtype=torch.int8, device=iou.device)
        labels[vals < self.high] = IGNORE
        labels[vals < self.low] = NEGATIVE
        if self.allow_low_quality_matches:
            best_per_gt, _ = iou.max(dim=1)
            _, pred_inds = torch.nonzero(iou == best_per_gt[:, None], as_tuple=True)
            labels[pred_inds] = POSITIVE
        return idx, labels
