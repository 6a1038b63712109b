"""Set-prediction loss terms shared by the DETR family's criteria (DETR, Deformable DETR, DINO, RT-DETR).

After Hungarian matching (per image: query indices, target indices), every criterion normalizes by the
number of target boxes averaged over processes, regresses matched normalized cxcywh boxes with L1 and
1 - GIoU (Carion et al. 2020, Sec. 3.1), and logs the class error and the cardinality error. RT-DETR
classifies with the IoU-aware varifocal loss (``varifocal_set_loss``); denoising queries are supervised
by fixed (query, target) pairs (``denoising_indices``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_iou, generalized_box_iou

from detres.modeling.layers.losses import varifocal_loss

from detres.structures.boxes import cxcywh_to_xyxy
from detres.utils.distributed import all_reduce_mean

Indices = list[tuple[Tensor, Tensor]]


def matched_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """(image index [M], query index [M]) of every matched query, to index [B, Q, ...] outputs."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


def matched_labels(targets: list[dict[str, Tensor]], indices: Indices) -> Tensor:
    """[M] target labels in the order of ``matched_index``."""
    return torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])


def num_boxes_normalizer(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """max(target boxes in the batch averaged over processes, 1): every rank divides by the same count."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    return torch.clamp(all_reduce_mean(n), min=1).item()


def box_losses(pred_boxes: Tensor, targets: list[dict[str, Tensor]], indices: Indices,
               num_boxes: float) -> dict[str, Tensor]:
    """L1 and 1 - GIoU of matched boxes (pred_boxes [B, Q, 4] and targets' "boxes", normalized cxcywh),
    summed and divided by ``num_boxes``: ``loss_bbox``, ``loss_giou``."""
    src = pred_boxes[matched_index(indices)]
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
    loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
    giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))
    return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}


def varifocal_set_loss(logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]], indices: Indices,
                       num_boxes: float, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """RT-DETR's ``loss_vfl``: varifocal loss over logits [B, Q, K] whose target score is, for each matched
    query at its target's class, the (detached) IoU of its box (pred_boxes [B, Q, 4] normalized cxcywh)
    with that target's box, and 0 elsewhere; mean over queries, summed, times Q / ``num_boxes``."""
    idx = tuple(i.to(logits.device) for i in matched_index(indices))
    labels = matched_labels(targets, indices).to(logits.device)
    src = pred_boxes[idx].detach()
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
    iou = torch.diag(box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[idx[0], idx[1], labels] = True
    score = torch.zeros_like(logits)
    score[idx[0], idx[1], labels] = iou.to(logits.dtype)
    loss = varifocal_loss(logits, score, positive, alpha, gamma)
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def denoising_indices(targets: list[dict[str, Tensor]], num_groups: int, pad_size: int) -> Indices:
    """(query, target) pairs of the positive denoising queries (DINO, RT-DETR): the ``pad_size`` denoising
    queries form ``num_groups`` groups of ``pad_size // num_groups`` queries, positives first; in group g,
    box k of an image is query g * group_size + k. Per image: (queries [G * N], targets [G * N])."""
    group_size = pad_size // num_groups
    out = []
    for t in targets:
        n = len(t["labels"])
        k = torch.arange(n, device=t["labels"].device)
        q = (torch.arange(num_groups, device=k.device)[:, None] * group_size + k[None]).flatten()
        out.append((q, k.repeat(num_groups)))
    return out


@torch.no_grad()
def cardinality_error(logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
    """L1 error between the per-image count of queries whose argmax is not the last column and the
    number of targets (logits [B, Q, C]). The official formula, kept as is for sigmoid classifiers
    too, where the last column is an ordinary class; a logged metric, no gradient."""
    n_tgt = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float32)
    n_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
    return F.l1_loss(n_pred, n_tgt)


@torch.no_grad()
def class_error(matched_logits: Tensor, labels: Tensor) -> Tensor:
    """100 - top-1 accuracy (%) of matched queries (matched_logits [M, C], labels [M]); 0 when M = 0."""
    if labels.numel() == 0:
        return matched_logits.new_zeros(())
    # count * (100 / M) as the references' ``accuracy`` (not mean * 100): equal to the last float bit
    correct = (matched_logits.argmax(-1) == labels).float().sum()
    return 100.0 - correct * (100.0 / labels.numel())
