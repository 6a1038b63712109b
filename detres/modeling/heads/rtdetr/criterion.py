"""RT-DETR's set-prediction loss (Zhao et al. 2024, Sec. 4.3; the official RTDETRCriterionv2).

Focal-cost Hungarian matching (class 2, L1 5, GIoU 2) per decoder layer, then the IoU-aware varifocal
classification loss (``loss_vfl``) plus L1 and GIoU box losses, normalized by the number of target boxes.
Terms are keyed as the official criterion: the last layer's ``loss_vfl``, ``loss_bbox``, ``loss_giou``;
``_aux_{i}`` per earlier decoder layer, ``_enc_{i}`` per set of selected encoder proposals (matched on
their own outputs) and ``_dn_{i}`` per decoder layer's denoising queries (fixed pairs, no matching,
normalized by num_boxes times the number of denoising groups).

What a head puts in its training outputs (the official decoder's training dict has the same keys):
    "pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4]   last decoder layer, matching queries only
    "aux_outputs"      list of L-1 such dicts          decoder layers 0..L-2             -> ``_aux_{i}``
    "enc_aux_outputs"  list of such dicts              the selected encoder proposals   -> ``_enc_{i}``
    "enc_meta"         {"class_agnostic": bool}        optional; True: encoder logits have 1 column
    "dn_aux_outputs"   list of L dicts [B, D, ...]     denoising queries of every layer -> ``_dn_{i}``
    "dn_meta"          {"dn_num_group": G, "dn_num_split": [D, Q]}   needed with "dn_aux_outputs"
The D denoising queries form G groups of D // G, each the positives (image's box k is query
g * (D // G) + k) followed by the negatives (``set_losses.denoising_indices``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detres.modeling.heads.deformable_detr.criterion import FocalSetCriterion
from detres.modeling.layers.hungarian_matcher import HungarianMatcher
from detres.modeling.layers.set_losses import (
    Indices, box_losses, class_error, denoising_indices, matched_index, matched_labels, num_boxes_normalizer,
    varifocal_set_loss,
)
from detres.registry import LAYERS

Targets = list[dict[str, Tensor]]


@LAYERS.register()
class RTDETRCriterion(FocalSetCriterion):
    """Matching + varifocal / L1 / GIoU losses. ``forward`` returns the UNweighted terms (and the last
    layer's ``class_error`` metric); ``weighted`` applies the weights to every suffixed term.

    Args:
        num_classes: K; logits have K columns (sigmoid per class, no no-object column).
        matcher: the Hungarian matcher; None: a ``FocalHungarianMatcher`` with the official costs
            (class 2, L1 5, GIoU 2, alpha 0.25, gamma 2).
        vfl_alpha / vfl_gamma: the varifocal loss's negative weight and focusing exponent.
        vfl_loss_coef / bbox_loss_coef / giou_loss_coef: weights of ``loss_vfl``, ``loss_bbox``,
            ``loss_giou`` and of their suffixed copies.
        num_decoder_layers: passed by the head (the official weight dict has no per-layer entries).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_loss_coef: float = 1.0,
        bbox_loss_coef: float = 5.0,
        giou_loss_coef: float = 2.0,
        num_decoder_layers: int = 6,
    ) -> None:
        super().__init__(num_classes=num_classes, matcher=matcher, bbox_loss_coef=bbox_loss_coef,
                         giou_loss_coef=giou_loss_coef, num_decoder_layers=num_decoder_layers)
        self.vfl_alpha, self.vfl_gamma = vfl_alpha, vfl_gamma
        self.weights = {"loss_vfl": vfl_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}

    @property
    def weight_dict(self) -> dict[str, float]:
        """The official weight dict: one weight per term; suffixed copies share it (``weight_of``)."""
        return dict(self.weights)

    def _losses(self, outputs: dict[str, Tensor], targets: Targets, num_boxes: float, log: bool,
                indices: Indices | None = None) -> dict[str, Tensor]:
        """One layer's ``loss_vfl``, ``loss_bbox``, ``loss_giou`` (+ ``class_error`` if ``log``);
        ``indices`` (query, target) pairs per image replace the matching when given."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        logits = outputs["pred_logits"]
        out = {"loss_vfl": varifocal_set_loss(logits, outputs["pred_boxes"], targets, indices, num_boxes,
                                              self.vfl_alpha, self.vfl_gamma)}
        out.update(box_losses(outputs["pred_boxes"], targets, indices, num_boxes))
        if log:
            idx = tuple(i.to(logits.device) for i in matched_index(indices))
            out["class_error"] = class_error(logits[idx], matched_labels(targets, indices).to(logits.device))
        return out

    def forward(self, outputs: dict[str, Any], targets: Targets) -> dict[str, Tensor]:
        """outputs: the head's training dict (module docstring); targets: per image "labels" [N] 0..K-1,
        "boxes" [N, 4] normalized cxcywh (N may be 0).

        Returns loss_vfl, loss_bbox, loss_giou, class_error and the three losses with ``_aux_{i}``,
        ``_enc_{i}``, ``_dn_{i}`` suffixes for the layers present (all unweighted).
        """
        self._check(outputs, targets)
        num_boxes = num_boxes_normalizer(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(_suffixed(self._losses(aux, targets, num_boxes, log=False), f"aux_{i}"))
        if outputs.get("dn_aux_outputs"):
            groups, indices = self.dn_indices(outputs, targets)
            for i, dn in enumerate(outputs["dn_aux_outputs"]):
                terms = self._losses(dn, targets, num_boxes * groups, log=False, indices=indices)
                losses.update(_suffixed(terms, f"dn_{i}"))
        enc_targets = targets
        if outputs.get("enc_meta", {}).get("class_agnostic", False):
            enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        for i, enc in enumerate(outputs.get("enc_aux_outputs", [])):
            losses.update(_suffixed(self._losses(enc, enc_targets, num_boxes, log=False), f"enc_{i}"))
        return losses

    @staticmethod
    def dn_indices(outputs: dict[str, Any], targets: Targets) -> tuple[int, Indices]:
        """(number of denoising groups G, per image (query, target) pairs of the positive denoising
        queries) from ``outputs["dn_meta"]`` ({"dn_num_group": G, "dn_num_split": [D, Q]})."""
        meta = outputs.get("dn_meta")
        if meta is None or "dn_num_group" not in meta or "dn_num_split" not in meta:
            raise KeyError("RTDETRCriterion: outputs has 'dn_aux_outputs' but no 'dn_meta' with 'dn_num_group' "
                           "and 'dn_num_split' [num_denoising, num_queries]; the head must return both")
        groups, pad = int(meta["dn_num_group"]), int(meta["dn_num_split"][0])
        most = max((len(t["labels"]) for t in targets), default=0)
        if pad % groups or 2 * most > pad // groups:
            raise ValueError(f"RTDETRCriterion: dn_meta gives {pad} denoising queries in {groups} groups, which "
                             f"cannot hold {most} positive + {most} negative queries per group")
        return groups, denoising_indices(targets, groups, pad)


def _suffixed(terms: dict[str, Tensor], suffix: str) -> dict[str, Tensor]:
    return {f"{k}_{suffix}": v for k, v in terms.items()}
