"""DINO's set-prediction loss (Zhang et al. 2023): Deformable DETR's focal criterion on the matching
queries of every decoder layer and on the selected encoder proposals (``_interm``, matched with their
real labels), plus the denoising queries' terms (``_dn``): each positive denoising query is supervised by
the box it was noised from, without matching; negatives only see the focal loss's "no object" target.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detres.modeling.heads.deformable_detr.criterion import FocalSetCriterion
from detres.modeling.layers.set_losses import denoising_indices, matched_index, num_boxes_normalizer
from detres.registry import LAYERS

#: terms a layer's denoising loss has (zero placeholders when there are no denoising queries, as the reference)
_DN_TERMS = ("loss_bbox", "loss_giou", "loss_ce", "loss_xy", "loss_hw", "cardinality_error")


@LAYERS.register()
class DINOCriterion(FocalSetCriterion):
    """``FocalSetCriterion`` + per-coordinate L1 metrics (``loss_xy``, ``loss_hw``), ``_interm`` terms
    for the selected proposals and ``_dn`` / ``_dn_i`` terms for the denoising queries.

    Args: as ``FocalSetCriterion`` (DINO's weights: ce 1, bbox 5, giou 2).
    """

    def __init__(self, *, ce_loss_coef: float = 1.0, **kwargs: Any) -> None:
        super().__init__(ce_loss_coef=ce_loss_coef, **kwargs)

    @property
    def weight_dict(self) -> dict[str, float]:
        """The official weight dict: last layer, ``_dn``, ``_i`` and ``_dn_i`` per aux layer, ``_interm``."""
        out = dict(self.weights)
        out.update({f"{k}_dn": v for k, v in self.weights.items()})
        for i in range(self.num_decoder_layers - 1):
            out.update({f"{k}_{i}": v for k, v in self.weights.items()})
            out.update({f"{k}_dn_{i}": v for k, v in self.weights.items()})
        out.update({f"{k}_interm": v for k, v in self.weights.items()})
        return out

    def _losses(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], num_boxes: float, log: bool,
                indices: list[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        """One layer's focal / L1 / GIoU terms + the L1 split into centre (``loss_xy``) and size
        (``loss_hw``), logged only."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        out = super()._losses(outputs, targets, num_boxes, log, indices)
        with torch.no_grad():
            src = outputs["pred_boxes"][matched_index(indices)]
            tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
            l1 = (src - tgt).abs()
            out["loss_xy"] = l1[:, :2].sum() / num_boxes
            out["loss_hw"] = l1[:, 2:].sum() / num_boxes
        return out

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """outputs: DINOHead's dict ("pred_logits", "pred_boxes", "aux_outputs", "interm_outputs",
        "dn_meta"); targets per image "labels" [N] 0..K-1, "boxes" [N, 4] normalized cxcywh.

        Returns the unweighted terms keyed as the reference (43 with 3 decoder layers; the ``_dn`` terms
        are zero placeholders when there are no denoising queries).
        """
        self._check(outputs, targets)
        device = outputs["pred_logits"].device
        num_boxes = num_boxes_normalizer(targets, device)
        dn = outputs.get("dn_meta")
        dn_out = dn["output_known_lbs_bboxes"] if dn else None
        dn_idx = self.denoising_indices(targets, dn["num_dn_group"], dn["pad_size"]) if dn else None
        groups = dn["num_dn_group"] if dn else 1

        def dn_terms(layer: dict[str, Tensor] | None) -> dict[str, Tensor]:
            if layer is None:
                return {f"{k}_dn": torch.zeros((), device=device) for k in _DN_TERMS}
            terms = self._losses(layer, targets, num_boxes * groups, log=False, indices=dn_idx)
            return {f"{k}_dn": v for k, v in terms.items()}

        losses = self._losses(outputs, targets, num_boxes, log=True)
        losses.update(dn_terms(dn_out))
        dn_aux = dn_out.get("aux_outputs", []) if dn_out else []
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes, log=False).items()})
            losses.update({f"{k}_{i}": v for k, v in dn_terms(dn_aux[i] if dn_out else None).items()})
        if "interm_outputs" in outputs:
            interm = self._losses(outputs["interm_outputs"], targets, num_boxes, log=False)
            losses.update({f"{k}_interm": v for k, v in interm.items()})
        return losses

    #: (query, target) pairs of the positive denoising queries (``set_losses.denoising_indices``).
    denoising_indices = staticmethod(denoising_indices)
