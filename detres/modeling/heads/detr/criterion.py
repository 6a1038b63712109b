"""DETR's set-prediction loss (Carion et al. 2020, Sec. 3.1, Eq. 2 and Appendix A.2).

After Hungarian matching: cross-entropy over K+1 classes with the no-object class down-weighted by
``eos_coef``, L1 and GIoU on the matched normalized cxcywh boxes (summed, divided by the number of
target boxes averaged over processes), and the cardinality error as a logged metric. With auxiliary
outputs the same terms are computed for every decoder layer, suffixed ``_0``, ``_1``, ...
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.modeling.layers.hungarian_matcher import HungarianMatcher
from detres.modeling.layers.set_losses import (
    box_losses, cardinality_error, class_error, matched_index, matched_labels, num_boxes_normalizer,
)
from detres.registry import LAYERS


@LAYERS.register()
class SetCriterion(nn.Module):
    """Matching + losses. ``forward`` returns the UNweighted terms; ``weight_dict`` holds the weights.

    Args:
        num_classes: K; logits have K+1 columns, the last one is no-object (``DETRHead`` passes its own).
        matcher: the Hungarian matcher (``DETRHead`` passes its ``matcher`` node's); None: DETR's
            default costs (class 1, L1 5, GIoU 2).
        eos_coef: relative weight of the no-object class in the cross-entropy.
        ce_loss_coef / bbox_loss_coef / giou_loss_coef: weights of ``loss_ce``, ``loss_bbox``, ``loss_giou``
            (and of their ``_i`` auxiliary copies).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        ce_loss_coef: float = 1.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = HungarianMatcher() if matcher is None else matcher
        self.eos_coef = eos_coef
        self.weights = {"loss_ce": ce_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Not persistent: official checkpoints have no such key and it follows from eos_coef.
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def weight_of(self, name: str) -> float:
        """Weight of a loss term, auxiliary suffix included (``loss_giou_3`` -> giou weight); 0 for metrics."""
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        return self.weights.get(base, 0.0)

    def loss_labels(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                    indices: list[tuple[Tensor, Tensor]], log: bool) -> dict[str, Tensor]:
        """Weighted cross-entropy over [B, Q, K+1]; ``class_error`` (top-1 error %, matched queries) if ``log``."""
        logits = outputs["pred_logits"]
        idx = matched_index(indices)
        matched = matched_labels(targets, indices).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = matched
        out = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))}
        if log:
            out["class_error"] = class_error(logits[idx], matched)
        return out

    def loss_cardinality(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """L1 error between the number of non-no-object predictions and of targets (a metric, no gradient)."""
        return {"cardinality_error": cardinality_error(outputs["pred_logits"], targets)}

    def loss_boxes(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                   indices: list[tuple[Tensor, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        """L1 and 1 - GIoU of matched [M, 4] normalized cxcywh boxes, summed and divided by ``num_boxes``."""
        return box_losses(outputs["pred_boxes"], targets, indices, num_boxes)

    def _layer_losses(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                      num_boxes: float, log: bool) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        out = self.loss_labels(outputs, targets, indices, log)
        out.update(self.loss_cardinality(outputs, targets))
        out.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return out

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """outputs: "pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4] normalized cxcywh, optional
        "aux_outputs" (list of such dicts). targets: per image "labels" [N] 0..K-1, "boxes" [N, 4]
        normalized cxcywh.

        Returns loss_ce, loss_bbox, loss_giou, class_error, cardinality_error and per aux layer i
        loss_ce_i, loss_bbox_i, loss_giou_i, cardinality_error_i (all unweighted).
        """
        num_boxes = num_boxes_normalizer(targets, outputs["pred_logits"].device)
        losses = self._layer_losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            layer = self._layer_losses(aux, targets, num_boxes, log=False)
            losses.update({f"{k}_{i}": v for k, v in layer.items()})
        return losses

    def weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted ``loss_*`` terms (what the trainer sums) plus the last layer's detached
        ``class_error`` and ``cardinality_error`` metrics for logging."""
        out = {k: v * self.weight_of(k) for k, v in losses.items() if self.weight_of(k) != 0}
        out.update({k: losses[k].detach() for k in ("class_error", "cardinality_error") if k in losses})
        return out
