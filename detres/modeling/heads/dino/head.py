"""DINOHead: DINO's transformer over every neck level + shared class and box predictors, with
contrastive denoising queries in training (Zhang et al. 2023)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detres.modeling.heads.deformable_detr.head import PRIOR_PROB
from detres.structures.boxes import inverse_sigmoid
from detres.modeling.heads.detr.head import build_set_criterion, child_node, layer_outputs
from detres.modeling.layers.denoising import ContrastiveDenoising, DenoisingQueries
from detres.modeling.heads.dino.transformer import EPS, DINOTransformer
from detres.modeling.layers.mlp import MLP
from detres.modeling.layers.topk_detections import sigmoid_topk_detections
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec


@HEADS.register()
class DINOHead(nn.Module):
    """Predictions of every decoder layer and of the selected encoder proposals.

    Args:
        num_classes: K; sigmoid class logits [.., K], no no-object column.
        position_encoding: mask -> sine positions per level (``PositionEmbeddingSine``, temperature 20).
        transformer: a ``DINOTransformer``.
        denoising: the training-time ``ContrastiveDenoising`` generator (None: no denoising).
        criterion: the training loss (``DINOCriterion``); None builds an inference-only head.
        num_queries: matching queries (selected proposals).
        aux_loss: also output (and supervise) every earlier decoder layer.
        share_pred_heads: one class and one box head for every decoder layer (the 4-scale recipe).
        test_topk: detections kept per image: the best (query, class) pairs (the reference's 300).
    """

    injects: ClassVar[dict[str, tuple[str, ...]]] = {
        "position_encoding": ("num_pos_feats",),
        "transformer": ("d_model", "num_feature_levels", "num_queries", "num_classes"),
        "denoising": ("num_classes", "d_model"),
        "criterion": ("num_classes", "matcher", "num_decoder_layers"),
    }

    def __init__(
        self, *, num_classes: int, position_encoding: nn.Module, transformer: DINOTransformer,
        denoising: ContrastiveDenoising | None = None, criterion: nn.Module | None = None, num_queries: int = 900,
        aux_loss: bool = True, share_pred_heads: bool = True, test_topk: int = 300,
    ) -> None:
        super().__init__()
        d = transformer.d_model
        self.num_classes, self.num_queries, self.aux_loss, self.test_topk = num_classes, num_queries, aux_loss, test_topk
        self.num_layers = len(transformer.decoder.layers)
        self.position_encoding = position_encoding
        self.transformer = transformer
        self.denoising = denoising

        def class_head() -> nn.Linear:
            lin = nn.Linear(d, num_classes)
            nn.init.constant_(lin.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
            return lin

        def box_head() -> MLP:
            mlp = MLP(d, d, 4, 3)
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
            return mlp

        if share_pred_heads:  # one module listed once per layer, as the reference's state dict
            self.class_embed = nn.ModuleList([class_head()] * self.num_layers)
            self.bbox_embed = nn.ModuleList([box_head()] * self.num_layers)
        else:
            self.class_embed = nn.ModuleList(class_head() for _ in range(self.num_layers))
            self.bbox_embed = nn.ModuleList(box_head() for _ in range(self.num_layers))
        self.criterion = criterion

    @classmethod
    def from_config(
        cls, *, input_shape: dict[str, ShapeSpec], num_classes: int, position_encoding: Mapping[str, Any],
        transformer: Mapping[str, Any], denoising: Mapping[str, Any] | None = None,
        matcher: Mapping[str, Any] | None = None, criterion: Mapping[str, Any] | None = None,
        num_queries: int = 900, aux_loss: bool = True, share_pred_heads: bool = True, test_topk: int = 300,
    ) -> "DINOHead":
        """Build the child nodes with what the head passes down (the neck's width and level count,
        ``num_queries``, ``num_classes``); the ``matcher`` node goes to the criterion."""
        widths = {s.channels for s in input_shape.values()}
        if len(widths) != 1:
            raise ValueError(f"DINOHead: every neck level must have one width, got {sorted(widths)}; set the neck's out_channels")
        width = widths.pop()
        where = "DINOHead"
        pos = instantiate(child_node(position_encoding, f"{where}.position_encoding", "num_pos_feats", width // 2,
                                     "half of the neck's out_channels"))
        tr_node = dict(transformer)
        for key, value, follows in (("d_model", width, "the neck's out_channels"),
                                    ("num_feature_levels", len(input_shape), "the number of neck outputs"),
                                    ("num_queries", num_queries, "model.head.num_queries"),
                                    ("num_classes", num_classes, "model.head.num_classes")):
            tr_node = child_node(tr_node, f"{where}.transformer", key, value, follows)
        dn = None
        if denoising is not None:
            dn_node = child_node(denoising, f"{where}.denoising", "num_classes", num_classes, "model.head.num_classes")
            dn = instantiate(child_node(dn_node, f"{where}.denoising", "d_model", width, "the neck's out_channels"))
        crit = build_set_criterion(where, criterion, matcher, num_classes, int(tr_node.get("num_decoder_layers", 6)))
        return cls(num_classes=num_classes, position_encoding=pos, transformer=instantiate(tr_node), denoising=dn,
                   criterion=crit, num_queries=num_queries, aux_loss=aux_loss, share_pred_heads=share_pred_heads,
                   test_topk=test_topk)

    def forward_layers(self, feats: Sequence[Tensor], masks: Sequence[Tensor], select_indices: Tensor | None = None,
                       dn: DenoisingQueries | None = None) -> tuple[Tensor, ...]:
        """feats: per level [B, C, H_l, W_l]; masks: per level [B, H_l, W_l] bool (True = padding).

        Returns class logits [L, B, D+Q, K] and boxes [L, B, D+Q, 4] of every decoder layer (D
        denoising queries first, when ``dn`` is given), the selected proposals' logits [B, Q, K],
        refined boxes [B, Q, 4] and grid boxes [B, Q, 4], and the selected token indices [B, Q].
        """
        pos = [self.position_encoding(m).to(f.dtype) for f, m in zip(feats, masks)]
        run = self.transformer(
            feats, masks, pos, self.bbox_embed, select_indices,
            dn.content if dn is not None else None, dn.boxes if dn is not None else None,
            dn.attn_mask if dn is not None else None,
        )
        logits = torch.stack([self.class_embed[lvl](run.hs[lvl]) for lvl in range(self.num_layers)])
        boxes = torch.stack([
            (self.bbox_embed[lvl](run.hs[lvl]) + inverse_sigmoid(run.references[lvl], EPS)).sigmoid()
            for lvl in range(self.num_layers)
        ])
        return logits, boxes, run.enc_logits, run.enc_boxes, run.init_proposals, run.topk

    def outputs(self, logits: Tensor, boxes: Tensor, enc_logits: Tensor, enc_boxes: Tensor, init_proposals: Tensor,
                topk: Tensor | None = None, dn: DenoisingQueries | None = None) -> dict[str, Any]:
        """``forward_layers``' tensors -> the reference's output dict: "pred_logits" [B, Q, K],
        "pred_boxes" [B, Q, 4], "aux_outputs", "interm_outputs" (selected proposals, refined boxes),
        "interm_outputs_for_matching_pre" (same logits, grid boxes) and "dn_meta" (None at inference;
        in training {"pad_size", "num_dn_group", "output_known_lbs_bboxes": the denoising queries'
        outputs, keyed like the matching ones})."""
        d = 0 if dn is None else dn.content.shape[1]
        out = layer_outputs(logits[:, :, d:], boxes[:, :, d:], self.aux_loss)
        out["interm_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": enc_logits, "pred_boxes": init_proposals}
        out["dn_meta"] = None
        if dn is not None:
            out["dn_meta"] = {"pad_size": d, "num_dn_group": dn.num_groups,
                              "output_known_lbs_bboxes": layer_outputs(logits[:, :, :d], boxes[:, :, :d], self.aux_loss)}
        return out

    def losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses; targets per image: "labels" [N] 0..K-1, "boxes" [N, 4] normalized cxcywh."""
        if self.criterion is None:
            raise ValueError("DINOHead was built without a criterion (inference only); set model.head.criterion to train")
        return self.criterion.weighted(self.criterion(outputs, targets))

    @torch.no_grad()
    def inference(self, outputs: dict[str, Any], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The ``test_topk`` best (query, class) sigmoid scores per image, boxes xyxy in ``sizes`` pixels."""
        return sigmoid_topk_detections(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.test_topk)
