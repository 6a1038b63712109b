"""Deformable DETR's set-prediction loss (Zhu et al. 2021, Sec. 4.1 and Appendix A.4).

As DETR's, with a sigmoid focal loss over K classes (Lin et al. 2017; alpha 0.25, gamma 2) instead of the
softmax cross-entropy with a no-object class: after focal-cost Hungarian matching, matched queries get
a one-hot target at their class and every other query an all-zero target. The focal loss is averaged
over queries, summed and scaled by the number of queries over the number of target boxes (the official
normalization). Auxiliary decoder layers give ``_0``, ``_1``, ... terms; two-stage encoder proposals
give ``_enc`` terms, matched class-agnostically (every target label set to 0).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from detres.modeling.layers.hungarian_matcher import FocalHungarianMatcher, HungarianMatcher
from detres.modeling.layers.set_losses import (
    box_losses, cardinality_error, class_error, matched_index, matched_labels, num_boxes_normalizer,
)
from detres.registry import LAYERS

_METRICS = ("class_error", "cardinality_error")


@LAYERS.register()
class FocalSetCriterion(nn.Module):
    """Matching + focal / L1 / GIoU losses. ``forward`` returns the UNweighted terms; ``weighted`` applies
    the weights.

    Args:
        num_classes: K; logits have K columns (sigmoid per class, no no-object column).
        matcher: the Hungarian matcher (the head passes its ``matcher`` node's); None: a
            ``FocalHungarianMatcher`` with the official costs (class 2, L1 5, GIoU 2).
        focal_alpha / focal_gamma: the focal loss's positive weight and focusing exponent.
        ce_loss_coef / bbox_loss_coef / giou_loss_coef: weights of ``loss_ce``, ``loss_bbox``, ``loss_giou``
            and of their suffixed copies (``_0``, ``_enc``, ...).
        num_decoder_layers: only for ``weight_dict`` (the official listing has one suffix per auxiliary
            decoder layer); ``weighted`` weighs any suffix.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        ce_loss_coef: float = 2.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
        num_decoder_layers: int = 6,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = FocalHungarianMatcher() if matcher is None else matcher
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.weights = {"loss_ce": ce_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
        self.num_decoder_layers = num_decoder_layers

    @property
    def weight_dict(self) -> dict[str, float]:
        """The official weight dict: the last layer's terms, ``_i`` for each auxiliary decoder layer, ``_enc``."""
        out = dict(self.weights)
        for suffix in [str(i) for i in range(self.num_decoder_layers - 1)] + ["enc"]:
            out.update({f"{k}_{suffix}": v for k, v in self.weights.items()})
        return out

    def weight_of(self, name: str) -> float:
        """Weight of a loss term, any suffix included (``loss_giou_3``, ``loss_ce_enc``); 0 for metrics."""
        for base, w in self.weights.items():
            if name == base or name.startswith(base + "_"):
                return w
        return 0.0

    def loss_labels(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                    indices: list[tuple[Tensor, Tensor]], num_boxes: float, log: bool) -> dict[str, Tensor]:
        """Sigmoid focal loss over logits [B, Q, K] against one-hot targets of the matched queries;
        ``class_error`` (top-1 error %, matched queries) if ``log``."""
        logits = outputs["pred_logits"]
        idx = matched_index(indices)
        matched = matched_labels(targets, indices).to(logits.device)
        onehot = torch.zeros_like(logits)
        onehot[idx[0].to(logits.device), idx[1].to(logits.device), matched] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma)
        # Official normalization: mean over queries, sum, / num_boxes, times the number of queries.
        out = {"loss_ce": focal.mean(1).sum() / num_boxes * logits.shape[1]}
        if log:
            out["class_error"] = class_error(logits[idx], matched)
        return out

    def _check(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> None:
        k = outputs["pred_logits"].shape[-1]
        if k != self.num_classes:
            raise ValueError(f"{type(self).__name__}: pred_logits has {k} classes, expected "
                             f"num_classes={self.num_classes} (sigmoid logits have no no-object column)")
        for i, t in enumerate(targets):
            if len(t["labels"]) and not 0 <= int(t["labels"].min()) <= int(t["labels"].max()) < k:
                raise ValueError(f"{type(self).__name__}: image {i} has target labels outside 0..{k - 1} "
                                 f"({t['labels'].tolist()}); labels are contiguous 0..K-1, set num_classes")

    def _losses(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                num_boxes: float, log: bool, indices: list[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        """One layer's terms; ``indices`` (query, target) pairs per image replace the matching when given."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        out = self.loss_labels(outputs, targets, indices, num_boxes, log)
        out.update(box_losses(outputs["pred_boxes"], targets, indices, num_boxes))
        out["cardinality_error"] = cardinality_error(outputs["pred_logits"], targets)
        return out

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """outputs: "pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4] normalized cxcywh, optional
        "aux_outputs" (list of such dicts) and "enc_outputs" (such a dict over the S encoder proposals).
        targets: per image "labels" [N] 0..K-1, "boxes" [N, 4] normalized cxcywh (N may be 0).

        Returns loss_ce, class_error, loss_bbox, loss_giou, cardinality_error; loss_ce_i, loss_bbox_i,
        loss_giou_i, cardinality_error_i per aux layer i; the same with ``_enc`` (all unweighted).
        """
        self._check(outputs, targets)
        num_boxes = num_boxes_normalizer(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes, log=False).items()})
        if "enc_outputs" in outputs:
            # Encoder proposals are scored foreground vs background: every target counts as class 0.
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            enc = self._losses(outputs["enc_outputs"], binary, num_boxes, log=False)
            losses.update({f"{k}_enc": v for k, v in enc.items()})
        return losses

    def weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted ``loss_*`` terms (what the trainer sums) plus the last layer's detached
        ``class_error`` and ``cardinality_error`` metrics for logging."""
        out = {k: v * self.weight_of(k) for k, v in losses.items() if self.weight_of(k) != 0}
        out.update({k: losses[k].detach() for k in _METRICS if k in losses})
        return out
