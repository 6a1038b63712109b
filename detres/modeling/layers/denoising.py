"""Contrastive denoising queries (DINO, Zhang et al. 2023, Sec. 3.2; DN-DETR, Li et al. 2022), shared by
DINO and RT-DETR (the same groups, noise and mask; they differ only in their noise scales).

In training, each batch adds groups of noised ground-truth queries before the matching queries.
A group holds a positive and a negative copy of every target box of an image: positives are moved by
less than ``box_noise_scale`` x half their size per edge and must reconstruct their box; negatives are
moved by between one and two times that and must predict "no object". Labels are flipped to a random
class with probability ``label_noise_ratio / 2``. The queries are supervised directly (no matching).
An attention mask keeps the matching queries from seeing any denoising query (they would read the
answers) and each group from seeing the other groups.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from detres.registry import LAYERS
from detres.structures.boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh


class DenoisingQueries(NamedTuple):
    """content [B, D, C] label embeddings; boxes [B, D, 4] noised boxes (unactivated, inverse
    sigmoid); attn_mask [D+Q, D+Q] bool (True = may not attend); D = num_groups * group_size, a group
    being ``group_size // 2`` positive then as many negative slots (unused slots are zero padding)."""

    content: Tensor
    boxes: Tensor
    attn_mask: Tensor
    num_groups: int
    group_size: int


def denoising_attn_mask(num_groups: int, group_size: int, num_queries: int, device: torch.device) -> Tensor:
    """[D+Q, D+Q] bool, True where query i may not attend to query j: matching queries (the last Q)
    never see denoising queries; a denoising group sees itself and the matching queries only."""
    d = num_groups * group_size
    mask = torch.zeros(d + num_queries, d + num_queries, dtype=torch.bool, device=device)
    mask[d:, :d] = True
    for g in range(num_groups):
        lo, hi = g * group_size, (g + 1) * group_size
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:d] = True
    return mask


@LAYERS.register()
class ContrastiveDenoising(nn.Module):
    """Builds the denoising queries of a training batch; holds the label embedding (``label_enc``).

    Args:
        num_classes: K; the label book has K + 1 entries as the reference (the last is unused padding).
        d_model: query width (the head passes it).
        num_dn_queries: about how many positive + negative queries per image: num_dn_queries //
            (max boxes per image) groups, at least 1 (the reference's ``dn_number``).
        label_noise_ratio: twice the probability of flipping a label.
        box_noise_scale: the edge noise in units of half the box size (positives below it, negatives
            between it and twice it).
    """

    def __init__(self, *, num_classes: int, d_model: int = 256, num_dn_queries: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 0.4) -> None:
        super().__init__()
        self.num_classes, self.num_dn_queries = num_classes, num_dn_queries
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale
        self.label_enc = nn.Embedding(num_classes + 1, d_model)

    def noised_boxes(self, boxes: Tensor, negative: Tensor) -> Tensor:
        """boxes [N, 4] normalized cxcywh; negative [N] bool -> noised cxcywh, clamped to the image:
        each xyxy edge moves by u * half the box size * scale with a random sign, u in [0, 1) for
        positives and [1, 2) for negatives."""
        if self.box_noise_scale <= 0:
            return boxes
        half = boxes[:, 2:].repeat(1, 2) / 2
        u = torch.rand_like(boxes) + negative[:, None].to(boxes.dtype)
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        xyxy = cxcywh_to_xyxy(boxes) + u * sign * half * self.box_noise_scale
        return xyxy_to_cxcywh(xyxy.clamp(0.0, 1.0))

    def noised_labels(self, labels: Tensor) -> Tensor:
        """labels [N] -> labels with each flipped to a uniform random class with probability ratio / 2."""
        if self.label_noise_ratio <= 0:
            return labels
        flip = torch.rand(labels.shape, device=labels.device) < self.label_noise_ratio * 0.5
        return torch.where(flip, torch.randint_like(labels, 0, self.num_classes), labels)

    def forward(self, targets: list[dict[str, Tensor]], num_queries: int) -> DenoisingQueries | None:
        """targets per image: "labels" [N_i] 0..K-1, "boxes" [N_i, 4] normalized cxcywh. None when
        denoising is off or the batch has no box."""
        counts = [len(t["labels"]) for t in targets]
        n_max = max(counts, default=0)
        if self.num_dn_queries <= 0 or n_max == 0:
            return None
        groups = max(self.num_dn_queries // n_max, 1)
        group_size = 2 * n_max
        b, d = len(targets), groups * group_size
        device = self.label_enc.weight.device
        content = torch.zeros(b, d, self.label_enc.embedding_dim, device=device)
        boxes = torch.zeros(b, d, 4, device=device)
        for i, t in enumerate(targets):
            n = counts[i]
            if n == 0:
                continue
            # slots of image i: group g, copy c (0 positive, 1 negative), box k -> g*2n_max + c*n_max + k
            copies = torch.arange(2 * groups, device=device)
            slots = (copies[:, None] * n_max + torch.arange(n, device=device)[None]).flatten()
            negative = (copies % 2 == 1)[:, None].expand(-1, n).flatten()
            labels = self.noised_labels(t["labels"].to(device).repeat(2 * groups))
            noised = self.noised_boxes(t["boxes"].to(device).float().repeat(2 * groups, 1), negative)
            content[i, slots] = self.label_enc(labels)
            boxes[i, slots] = inverse_sigmoid(noised, 1e-3)
        mask = denoising_attn_mask(groups, group_size, num_queries, device)
        return DenoisingQueries(content, boxes, mask, groups, group_size)
