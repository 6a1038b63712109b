"""Balanced positive/negative sampling of matched predictions (Ren et al. 2015, Sec. 3.1.3)."""
from __future__ import annotations

import torch
from torch import Tensor

from detres.registry import LAYERS


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


@LAYERS.register()
class BalancedSampler:
    """Per image, at most ``batch_size_per_image`` predictions, at most ``positive_fraction`` of them
    positive, the rest negative (RPN 256 / 0.5, ROI heads 512 / 0.25 in both references).

    Args:
        batch_size_per_image: sampled predictions per image.
        positive_fraction: upper bound of the positives' share.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"sampler needs batch_size_per_image > 0 and 0 <= positive_fraction <= 1, "
                f"got {batch_size_per_image} and {positive_fraction}"
            )
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __repr__(self) -> str:
        return f"BalancedSampler(batch_size_per_image={self.batch_size_per_image}, positive_fraction={self.positive_fraction})"

    def __call__(self, labels: Tensor, bg_label: int) -> tuple[Tensor, Tensor]:
        """labels [N] (-1 ignored, ``bg_label`` negative, else positive) -> (positive, negative) indices."""
        return sample_balanced(labels, self.batch_size_per_image, self.positive_fraction, bg_label)


#: The flat arguments of the old RPN / ROI heads that now live in their box coder, matcher and
#: sampler nodes (old key -> new key relative to the head), shared by both heads' ``moved_keys``.
MATCHING_MOVED_KEYS: dict[str, str] = {
    "box_weights": "box_coder.weights",
    "scale_clamp": "box_coder.scale_clamp",
    "fg_iou": "matcher.high",
    "bg_iou": "matcher.low",
    "batch_size_per_image": "sampler.batch_size_per_image",
    "positive_fraction": "sampler.positive_fraction",
}
