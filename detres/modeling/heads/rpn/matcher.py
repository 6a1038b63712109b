"""IoU matcher with low-quality matches and the balanced positive/negative sampler (Ren et al. 2015)."""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE, NEGATIVE, POSITIVE = -1, 0, 1


class Matcher:
    """Assigns each prediction (anchor / proposal) its best ground truth and a label.

    Labels: IoU < low -> 0 (negative); low <= IoU < high -> -1 (ignored); IoU >= high -> 1.
    ``allow_low_quality_matches`` also makes positive every prediction whose IoU with some ground
    truth equals that ground truth's best IoU (Ren et al. 2015, Sec. 3.1.2, condition (i)).
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool) -> None:
        if low > high:
            raise ValueError(f"matcher low threshold {low} > high threshold {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches

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


def sample_balanced(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int) -> tuple[Tensor, Tensor]:
    """Random subset of at most ``num_samples`` with at most ``positive_fraction`` positives.

    labels: [N] int, -1 ignored, ``bg_label`` negative, anything else positive.
    Returns (positive indices, negative indices), int64. Fills with negatives when positives run short.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=labels.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=labels.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
