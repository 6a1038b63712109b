"""Every box-format conversion in detres lives here.

Formats: ``xyxy`` (x0, y0, x1, y1) absolute pixels, the format everywhere outside DETR's loss;
``xywh`` (x0, y0, w, h), COCO's json format; ``cxcywh`` (centre, size), normalized to [0, 1]
inside DETR (Carion et al. 2020, Sec. 3.1).
"""
from __future__ import annotations

import torch
from torch import Tensor


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[N, 4] xyxy -> [N, 4] xywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[N, 4] xywh -> [N, 4] xyxy."""
    x0, y0, w, h = boxes.unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy (same units)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh (same units)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def normalize_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Divide [..., 4] boxes by (w, h, w, h) of ``size`` = (h, w)."""
    h, w = size
    return boxes / boxes.new_tensor([w, h, w, h])


def denormalize_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Multiply [..., 4] normalized boxes by (w, h, w, h) of ``size`` = (h, w)."""
    h, w = size
    return boxes * boxes.new_tensor([w, h, w, h])


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip [..., 4] xyxy boxes to an image of ``size`` = (h, w)."""
    h, w = size
    x0 = boxes[..., 0].clamp(min=0, max=w)
    y0 = boxes[..., 1].clamp(min=0, max=h)
    x1 = boxes[..., 2].clamp(min=0, max=w)
    y1 = boxes[..., 3].clamp(min=0, max=h)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """Scale [..., 4] xyxy boxes by (sx, sy, sx, sy)."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def box_area(boxes: Tensor) -> Tensor:
    """Areas of [N, 4] xyxy boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """[N] bool: width and height both above ``min_size``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w > min_size) & (h > min_size)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Unit-range boxes -> logit space: log(x / (1 - x)) with x clamped to [0, 1] and both terms to
    >= eps (the DETR family's; Deformable DETR and RT-DETR use 1e-5, DINO 1e-3)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
