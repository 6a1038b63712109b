"""Detections of sigmoid (focal-loss) DETR heads: the best (query, class) pairs over all queries and classes.

Deformable DETR's PostProcess (Zhu et al. 2021), also used by DINO and RT-DETR: a query may give
several detections with different labels; boxes are scaled to pixels and not clipped.
"""
from __future__ import annotations

from torch import Tensor

from detres.structures.boxes import cxcywh_to_xyxy, denormalize_boxes


def topk_detections(scores: Tensor, boxes: Tensor, sizes: list[tuple[int, int]], k: int) -> list[dict[str, Tensor]]:
    """The ``k`` highest of the flattened [Q * K] scores per image, best first.

    Args:
        scores: [B, Q, K] per-class scores (probabilities).
        boxes: [B, Q, 4] normalized cxcywh boxes.
        sizes: B (h, w) pixel sizes the boxes are scaled to.
        k: detections per image (at most Q * K).

    Returns:
        per image "boxes" [k, 4] absolute xyxy (not clipped), "scores" [k], "labels" [k] int64 0..K-1.
    """
    b, q, n_cls = scores.shape
    if len(sizes) != b:
        raise ValueError(f"topk_detections: {b} images of outputs but {len(sizes)} sizes")
    top, flat = scores.reshape(b, q * n_cls).topk(min(k, q * n_cls), dim=1)
    query, labels = flat // n_cls, flat % n_cls
    xyxy = cxcywh_to_xyxy(boxes)
    return [{"boxes": denormalize_boxes(xyxy[i, query[i]], size), "scores": top[i], "labels": labels[i]}
            for i, size in enumerate(sizes)]


def sigmoid_topk_detections(logits: Tensor, boxes: Tensor, sizes: list[tuple[int, int]],
                            k: int = 100) -> list[dict[str, Tensor]]:
    """Official Deformable DETR PostProcess: sigmoid of logits [B, Q, K], top ``k`` (query, class) pairs,
    boxes [B, Q, 4] normalized cxcywh -> xyxy pixels of ``sizes`` (h, w) per image. See ``topk_detections``."""
    return topk_detections(logits.sigmoid(), boxes, sizes, k)
