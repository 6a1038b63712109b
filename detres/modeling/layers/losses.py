"""Loss helpers shared by several heads: box regression and crowd regions (RPN, ROI heads), varifocal loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (``beta`` > 0, torchvision's 1/9) or L1 (``beta`` = 0, detectron2) over [N, 4]."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    if beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    return F.l1_loss(pred, target, reduction="sum")


def crowd_overlap(boxes: Tensor, crowd: Tensor) -> Tensor:
    """[N] max fraction of each xyxy box's area that lies inside one of the [C, 4] crowd boxes."""
    if crowd.numel() == 0 or boxes.numel() == 0:
        return boxes.new_zeros(boxes.shape[0])
    lt = torch.max(boxes[:, None, :2], crowd[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], crowd[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return (inter / area[:, None]).max(dim=1).values


def split_crowd(target: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(boxes [G, 4], labels [G]) of the non-crowd objects and the [C, 4] crowd boxes of a target."""
    boxes, labels = target["boxes"], target["labels"]
    crowd = target.get("iscrowd")
    if crowd is None:
        return boxes, labels, boxes[:0]
    crowd = crowd.bool()
    return boxes[~crowd], labels[~crowd], boxes[crowd]


def varifocal_loss(logits: Tensor, target_score: Tensor, positive: Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> Tensor:
    """Element-wise varifocal loss (Zhang et al. 2021, VarifocalNet, Eq. 2, in RT-DETR's form).

    Binary cross-entropy with logits against ``target_score`` (the IoU-aware classification score q:
    the matched box's IoU at its target class, 0 elsewhere), weighted by q on positives and by
    ``alpha * p^gamma`` on negatives (p = sigmoid(logits), detached), so easy negatives fade while
    positives are weighted by their localization quality.

    Args:
        logits: [..., K] classification logits.
        target_score: [..., K] targets in [0, 1], zero where ``positive`` is False.
        positive: [..., K] bool or 0/1 mask of the positive (query, class) pairs.
        alpha / gamma: the negatives' weight and focusing exponent (RT-DETR: 0.75, 2).

    Returns:
        [..., K] unreduced loss.
    """
    prob = logits.detach().sigmoid()
    weight = alpha * prob.pow(gamma) * (1 - positive.to(logits.dtype)) + target_score
    return F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
