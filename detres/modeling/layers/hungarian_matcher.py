"""Hungarian matching of DETR's queries to ground-truth boxes (Carion et al. 2020, Sec. 3.1, Eq. 1).

The matching cost is ``cost_class * class cost + cost_bbox * L1 + cost_giou * -GIoU`` on normalized
cxcywh boxes; the optimal one-to-one assignment comes from ``scipy.optimize.linear_sum_assignment``.
Shared by the DETR family: ``HungarianMatcher`` (DETR: class cost -softmax probability) and
``FocalHungarianMatcher`` (Deformable DETR, DINO, RT-DETR: focal-style cost on sigmoid probabilities).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detres.registry import LAYERS
from detres.structures.boxes import cxcywh_to_xyxy


def assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a [Q, N] cost matrix.

    Returns (query indices, target indices), int64, each of length min(Q, N), sorted by query.
    Empty targets (N = 0) give two empty tensors. NaN/inf costs raise with a hint.
    """
    q, n = cost.shape
    if q == 0 or n == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    c = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(c).all():
        raise ValueError(
            "HungarianMatcher: the cost matrix has NaN/inf entries; the model outputs diverged "
            "(lower the learning rate or enable gradient clipping, train.clip_grad)"
        )
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@LAYERS.register()
class HungarianMatcher(nn.Module):
    """One-to-one matching between predictions and targets, image by image.

    Args:
        cost_class: weight of the negative class probability.
        cost_bbox: weight of the L1 distance between normalized cxcywh boxes.
        cost_giou: weight of the negative generalized IoU.
    """

    def __init__(self, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(f"{type(self).__name__}: all costs are 0; set at least one of cost_class, cost_bbox, cost_giou")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def class_cost(self, logits: Tensor, tgt_labels: Tensor) -> Tensor:
        """logits [Q, K+1], tgt_labels [N] -> [Q, N] negative softmax probability of each target's class."""
        return -logits.softmax(-1)[:, tgt_labels]

    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """logits [Q, C], boxes [Q, 4] cxcywh; tgt_labels [N], tgt_boxes [N, 4] cxcywh -> cost [Q, N]."""
        c_class = self.class_cost(logits, tgt_labels)
        c_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """outputs: "pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4] normalized cxcywh.
        targets: per image "labels" [N_i] and "boxes" [N_i, 4] normalized cxcywh.

        Returns per image (query indices, target indices), each of length min(Q, N_i).
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{type(self).__name__}: {logits.shape[0]} images of outputs but {len(targets)} targets")
        out = []
        for i, t in enumerate(targets):
            if len(t["labels"]) == 0:
                out.append(assign(logits.new_zeros((logits.shape[1], 0))))
                continue
            cost = self.cost_matrix(logits[i].float(), boxes[i].float(), t["labels"], t["boxes"].float())
            out.append(assign(cost))
        return out


@LAYERS.register()
class FocalHungarianMatcher(HungarianMatcher):
    """Hungarian matching with the focal-style class cost of sigmoid classifiers (Zhu et al. 2021).

    Logits have K columns (no no-object class). With p = sigmoid(logit) at a target's class the class
    cost is ``alpha * (1-p)^gamma * -log(p + 1e-8) - (1-alpha) * p^gamma * -log(1-p + 1e-8)``: the focal
    loss of calling the query positive minus that of calling it negative (the official matcher).

    Args:
        cost_class / cost_bbox / cost_giou: weights of the class, L1 and -GIoU costs.
        alpha / gamma: the focal loss's positive weight and focusing exponent.
    """

    def __init__(self, *, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou)
        self.alpha, self.gamma = alpha, gamma

    def class_cost(self, logits: Tensor, tgt_labels: Tensor) -> Tensor:
        """logits [Q, K], tgt_labels [N] -> [Q, N] focal positive minus negative cost at each target's class."""
        prob = logits[:, tgt_labels].sigmoid()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        return pos - neg
