"""RTDETRHead: RT-DETR's query selection and decoder over the hybrid encoder's levels, with
contrastive denoising queries in training (Zhao et al. 2024)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detres.modeling.heads.detr.head import build_set_criterion, child_node, layer_outputs
from detres.modeling.heads.rtdetr.transformer import RTDETRTransformer
from detres.modeling.layers.denoising import ContrastiveDenoising, DenoisingQueries
from detres.modeling.layers.topk_detections import sigmoid_topk_detections
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec


@HEADS.register()
class RTDETRHead(nn.Module):
    """Predictions of every decoder layer and of the selected encoder anchors.

    Args:
        num_classes: K; sigmoid class logits [.., K], no no-object column.
        transformer: an ``RTDETRTransformer``.
        denoising: the training-time ``ContrastiveDenoising`` generator (None: no denoising).
        criterion: the training loss (``RTDETRCriterion``); None builds an inference-only head.
        num_queries: selected anchors = decoder queries.
        aux_loss: also output (and supervise) every earlier decoder layer.
        test_topk: detections kept per image: the best (query, class) pairs (the reference's 300).
    """

    injects: ClassVar[dict[str, tuple[str, ...]]] = {
        "transformer": ("in_channels", "d_model", "num_classes", "num_queries"),
        "denoising": ("num_classes", "d_model"),
        "criterion": ("num_classes", "matcher", "num_decoder_layers"),
    }

    def __init__(
        self, *, num_classes: int, transformer: RTDETRTransformer, denoising: ContrastiveDenoising | None = None,
        criterion: nn.Module | None = None, num_queries: int = 300, aux_loss: bool = True, test_topk: int = 300,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_queries, self.aux_loss, self.test_topk = num_classes, num_queries, aux_loss, test_topk
        self.transformer = transformer
        self.denoising = denoising
        self.criterion = criterion

    @classmethod
    def from_config(
        cls, *, input_shape: dict[str, ShapeSpec], num_classes: int, transformer: Mapping[str, Any],
        denoising: Mapping[str, Any] | None = None, matcher: Mapping[str, Any] | None = None,
        criterion: Mapping[str, Any] | None = None, num_queries: int = 300, aux_loss: bool = True,
        test_topk: int = 300, d_model: int | None = None,
    ) -> "RTDETRHead":
        """Build the child nodes with what the head passes down: the neck's channels per level, the
        width (``d_model``, default: the neck's width), ``num_classes`` and ``num_queries``."""
        where = "RTDETRHead"
        channels = [s.channels for s in input_shape.values()]
        width = d_model or channels[-1]
        tr = dict(transformer)
        for key, value, follows in (("in_channels", channels, "the neck's output channels"),
                                    ("d_model", width, "model.head.d_model"),
                                    ("num_classes", num_classes, "model.head.num_classes"),
                                    ("num_queries", num_queries, "model.head.num_queries")):
            tr = child_node(tr, f"{where}.transformer", key, value, follows)
        dn = None
        if denoising is not None:
            dn_node = child_node(denoising, f"{where}.denoising", "num_classes", num_classes, "model.head.num_classes")
            dn = instantiate(child_node(dn_node, f"{where}.denoising", "d_model", width, "model.head.d_model"))
        crit = build_set_criterion(where, criterion, matcher, num_classes, int(tr.get("num_decoder_layers", 6)))
        return cls(num_classes=num_classes, transformer=instantiate(tr), denoising=dn, criterion=crit,
                   num_queries=num_queries, aux_loss=aux_loss, test_topk=test_topk)

    def forward_layers(self, feats: Sequence[Tensor], masks: Sequence[Tensor] | None = None,
                       select_indices: Tensor | None = None, dn: DenoisingQueries | None = None) -> tuple[Tensor, ...]:
        """Every decoder layer's logits [L, B, D+Q, K] and boxes [L, B, D+Q, 4] (D denoising queries
        first when ``dn`` is given), the selected anchors' logits [B, Q, K], boxes [B, Q, 4] and
        indices [B, Q]."""
        run = self.transformer(feats, masks, select_indices, dn.content if dn is not None else None,
                               dn.boxes if dn is not None else None, dn.attn_mask if dn is not None else None)
        return tuple(run)

    def outputs(self, logits: Tensor, boxes: Tensor, enc_logits: Tensor, enc_boxes: Tensor,
                topk: Tensor | None = None, dn: DenoisingQueries | None = None) -> dict[str, Any]:
        """``forward_layers``' tensors -> the reference's training-mode output dict: "pred_logits"
        [B, Q, K], "pred_boxes" [B, Q, 4], "aux_outputs", "enc_aux_outputs" (the selected anchors),
        "enc_meta"; with denoising also "dn_aux_outputs" (every layer's denoising predictions) and
        "dn_meta" ({"dn_num_group", "dn_num_split": [D, Q]}, the reference's)."""
        d = 0 if dn is None else dn.content.shape[1]
        out = layer_outputs(logits[:, :, d:], boxes[:, :, d:], self.aux_loss)
        out["enc_aux_outputs"] = [{"pred_logits": enc_logits, "pred_boxes": enc_boxes}]
        out["enc_meta"] = {"class_agnostic": False}
        if dn is not None:
            out["dn_aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:, :, :d], boxes[:, :, :d])]
            out["dn_meta"] = {"dn_num_group": dn.num_groups, "dn_num_split": [d, logits.shape[2] - d]}
        return out

    def losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses; targets per image: "labels" [N] 0..K-1, "boxes" [N, 4] normalized cxcywh."""
        if self.criterion is None:
            raise ValueError("RTDETRHead was built without a criterion (inference only); set model.head.criterion to train")
        return self.criterion.weighted(self.criterion(outputs, targets))

    @torch.no_grad()
    def inference(self, outputs: dict[str, Any], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The ``test_topk`` best (query, class) sigmoid scores per image, boxes xyxy in ``sizes`` pixels."""
        return sigmoid_topk_detections(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.test_topk)
