"""Box-regression and crowd-region helpers shared by the RPN and the ROI heads."""
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
