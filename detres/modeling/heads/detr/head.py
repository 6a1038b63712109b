"""DETRHead: transformer + learned queries + class and box predictors (Carion et al. 2020, Sec. 3.2)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.modeling.heads.detr.criterion import SetCriterion
from detres.modeling.heads.detr.matcher import HungarianMatcher
from detres.modeling.heads.detr.position_encoding import build_position_encoding
from detres.modeling.heads.detr.transformer import Transformer
from detres.registry import HEADS
from detres.structures import ShapeSpec
from detres.structures.boxes import cxcywh_to_xyxy, denormalize_boxes


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box FFN)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


@HEADS.register()
class DETRHead(nn.Module):
    """DETR's prediction head over one feature map of width ``hidden_dim`` (the neck's output).

    Args:
        input_shape: the neck's ``output_shape()`` (injected); ``in_feature`` picks the level (default:
            the only / last one). Its channels must equal ``hidden_dim``.
        num_classes: K; the class head has K+1 outputs, the last one is no-object.
        hidden_dim, nheads, enc_layers, dec_layers, ffn_dim, dropout, pre_norm, activation: transformer.
        num_queries: number of learned object queries.
        aux_loss: also predict (and supervise) from every intermediate decoder layer.
        position_encoding: ``sine`` or ``learned``.
        cost_class / cost_bbox / cost_giou: Hungarian matching costs.
        ce_loss_coef / bbox_loss_coef / giou_loss_coef / eos_coef: loss weights.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        num_classes: int,
        *,
        hidden_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        num_queries: int = 100,
        pre_norm: bool = False,
        aux_loss: bool = True,
        position_encoding: str = "sine",
        activation: str = "relu",
        in_feature: str | None = None,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        ce_loss_coef: float = 1.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
        eos_coef: float = 0.1,
    ) -> None:
        super().__init__()
        if not input_shape:
            raise ValueError("DETRHead: input_shape is empty; the neck must output one feature map")
        self.in_feature = in_feature or list(input_shape)[-1]
        if self.in_feature not in input_shape:
            raise ValueError(f"DETRHead.in_feature '{self.in_feature}' is not one of the neck outputs {list(input_shape)}")
        channels = input_shape[self.in_feature].channels
        if channels != hidden_dim:
            raise ValueError(
                f"DETRHead: feature '{self.in_feature}' has {channels} channels but hidden_dim is {hidden_dim}; "
                f"set the neck's out_channels to {hidden_dim} (ChannelMapper is DETR's input_proj)"
            )
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.position_encoding = build_position_encoding(position_encoding, hidden_dim)
        self.transformer = Transformer(
            hidden_dim, nheads, enc_layers, dec_layers, ffn_dim, dropout, activation, pre_norm,
            return_intermediate_dec=True,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou)
        self.criterion = SetCriterion(num_classes, matcher, eos_coef, ce_loss_coef, bbox_loss_coef, giou_loss_coef)

    def forward(self, feature: Tensor, mask: Tensor) -> dict[str, Any]:
        """feature [B, C, H, W]; mask [B, H, W] bool (True = padding).

        Returns "pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4] normalized cxcywh (relative to each
        image's unpadded size) and "aux_outputs": such dicts for decoder layers 0..L-2 (when aux_loss).
        """
        return self.outputs(*self.forward_layers(feature, mask))

    def forward_layers(self, feature: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits [L, B, Q, K+1] and normalized cxcywh boxes [L, B, Q, 4] of every decoder layer."""
        pos = self.position_encoding(mask).to(feature.dtype)
        hs = self.transformer(feature, mask, self.query_embed.weight, pos)[0]  # [L, B, Q, C]
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()

    def outputs(self, logits: Tensor, boxes: Tensor) -> dict[str, Any]:
        """Every layer's [L, B, Q, ...] predictions -> the reference's output dict (last layer, aux)."""
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses for the trainer; targets per image: "labels" [N] 0..K-1, "boxes" [N, 4]
        normalized cxcywh."""
        return self.criterion.weighted(self.criterion(outputs, targets))

    @torch.no_grad()
    def inference(self, outputs: dict[str, Any], sizes: list[tuple[int, int]], topk: int = 0) -> list[dict[str, Tensor]]:
        """Detections per image with boxes in absolute xyxy pixels of ``sizes`` (h, w).

        topk = 0: the reference's rule, one detection per query: softmax, best non-no-object class.
        topk > 0: the ``topk`` best (query, class) pairs over all queries and classes, so a query may
        give several labels (more recall at high ``max_dets``).
        """
        prob = outputs["pred_logits"].softmax(-1)[..., :-1]
        boxes = cxcywh_to_xyxy(outputs["pred_boxes"])
        results = []
        for i, size in enumerate(sizes):
            b = denormalize_boxes(boxes[i], size)
            if topk > 0:
                k = min(topk, prob[i].numel())
                scores, flat = prob[i].flatten().topk(k)
                q, labels = flat // prob.shape[-1], flat % prob.shape[-1]
                results.append({"boxes": b[q], "scores": scores, "labels": labels})
            else:
                scores, labels = prob[i].max(-1)
                results.append({"boxes": b, "scores": scores, "labels": labels})
        return results
