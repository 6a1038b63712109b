"""DeformableDETRHead: the deformable transformer over every neck level + per-layer class and box
predictors with focal-loss classification (Zhu et al. 2021), optionally with iterative box refinement
and two-stage queries."""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detres.structures.boxes import inverse_sigmoid
from detres.modeling.heads.deformable_detr.transformer import DeformableTransformer
from detres.modeling.heads.detr.head import build_set_criterion, child_node
from detres.modeling.layers.mlp import MLP
from detres.modeling.layers.topk_detections import sigmoid_topk_detections
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec

#: prior probability of an object at initialization (focal loss, Lin et al. 2017, Sec. 4.1)
PRIOR_PROB = 0.01


@HEADS.register()
class DeformableDETRHead(nn.Module):
    """Predictions of every decoder layer (and of the encoder proposals when two-stage) over the
    neck's levels, all of width ``transformer.d_model``.

    Args:
        num_classes: K; sigmoid class logits [.., K], no no-object column.
        position_encoding: mask -> sine positions per level (``PositionEmbeddingSine``, offset -0.5).
        transformer: a ``DeformableTransformer``.
        criterion: the training loss (``FocalSetCriterion``); None builds an inference-only head.
        num_queries: decoder queries (two-stage: proposals kept).
        aux_loss: also output (and supervise) every earlier decoder layer.
        with_box_refine: per-layer box heads that refine the reference boxes layer by layer.
        two_stage: queries from the top-scoring encoder proposals (needs ``transformer.two_stage``).
        test_topk: detections kept per image: the best (query, class) pairs (the reference's 100).
    """

    #: child node -> the arguments ``from_config`` passes into it (configs never write them).
    injects: ClassVar[dict[str, tuple[str, ...]]] = {
        "position_encoding": ("num_pos_feats",),
        "transformer": ("d_model", "num_feature_levels", "two_stage", "num_queries"),
        "criterion": ("num_classes", "matcher", "num_decoder_layers"),
    }

    def __init__(
        self, *, num_classes: int, position_encoding: nn.Module, transformer: DeformableTransformer,
        criterion: nn.Module | None = None, num_queries: int = 300, aux_loss: bool = True,
        with_box_refine: bool = False, two_stage: bool = False, test_topk: int = 100,
    ) -> None:
        super().__init__()
        if two_stage != transformer.two_stage:
            raise ValueError(f"DeformableDETRHead.two_stage is {two_stage} but the transformer's is {transformer.two_stage}")
        d = transformer.d_model
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.with_box_refine, self.two_stage, self.test_topk = with_box_refine, two_stage, test_topk
        self.num_layers = len(transformer.decoder.layers)
        self.position_encoding = position_encoding
        self.transformer = transformer
        class_embed = nn.Linear(d, num_classes)
        bbox_embed = MLP(d, d, 4, 3)
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - PRIOR_PROB) / PRIOR_PROB))
            nn.init.zeros_(bbox_embed.layers[-1].weight)
            nn.init.zeros_(bbox_embed.layers[-1].bias)
            bbox_embed.layers[-1].bias[2:] = -2.0  # start from small boxes (sigmoid(-2) = 0.12)
        n_pred = self.num_layers + (1 if two_stage else 0)
        if with_box_refine:  # independent heads per layer; only the first starts at small boxes
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(n_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(n_pred))
            for box in list(self.bbox_embed)[1:]:
                nn.init.zeros_(box.layers[-1].bias)
        else:  # one head shared by every layer (listed once per layer, as the reference's state dict)
            self.class_embed = nn.ModuleList([class_embed] * n_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * n_pred)
        if two_stage:  # proposals already carry a size
            with torch.no_grad():
                for box in self.bbox_embed:
                    box.layers[-1].bias[2:] = 0.0
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d)
        self.criterion = criterion

    @classmethod
    def from_config(
        cls, *, input_shape: dict[str, ShapeSpec], num_classes: int, position_encoding: Mapping[str, Any],
        transformer: Mapping[str, Any], matcher: Mapping[str, Any] | None = None,
        criterion: Mapping[str, Any] | None = None, num_queries: int = 300, aux_loss: bool = True,
        with_box_refine: bool = False, two_stage: bool = False, test_topk: int = 100,
    ) -> "DeformableDETRHead":
        """Build the child nodes with what the head passes down: the neck's width as ``d_model`` (half
        of it as ``num_pos_feats``), its number of levels as ``num_feature_levels``, ``two_stage`` and
        ``num_queries``; the ``matcher`` node is built and handed to the criterion with ``num_classes``."""
        if not input_shape:
            raise ValueError("DeformableDETRHead: input_shape is empty; the neck must output feature maps")
        widths = {s.channels for s in input_shape.values()}
        if len(widths) != 1:
            raise ValueError(f"DeformableDETRHead: every neck level must have one width, got {sorted(widths)}; "
                             "set the neck's out_channels")
        width = widths.pop()
        where = "DeformableDETRHead"
        pos = instantiate(child_node(position_encoding, f"{where}.position_encoding", "num_pos_feats", width // 2,
                                     "half of the neck's out_channels"))
        tr_node = child_node(transformer, f"{where}.transformer", "d_model", width, "the neck's out_channels")
        tr_node = child_node(tr_node, f"{where}.transformer", "num_feature_levels", len(input_shape),
                             "the number of neck outputs")
        tr_node = child_node(tr_node, f"{where}.transformer", "two_stage", two_stage, "model.head.two_stage")
        tr_node = child_node(tr_node, f"{where}.transformer", "num_queries", num_queries, "model.head.num_queries")
        crit = build_set_criterion(where, criterion, matcher, num_classes, int(tr_node.get("num_decoder_layers", 6)))
        return cls(num_classes=num_classes, position_encoding=pos, transformer=instantiate(tr_node),
                   criterion=crit, num_queries=num_queries, aux_loss=aux_loss, with_box_refine=with_box_refine,
                   two_stage=two_stage, test_topk=test_topk)

    def forward_layers(self, feats: Sequence[Tensor], masks: Sequence[Tensor],
                       select_indices: Tensor | None = None) -> tuple[Tensor, ...]:
        """feats: per level [B, C, H_l, W_l]; masks: per level [B, H_l, W_l] bool (True = padding).

        Returns class logits [L, B, Q, K] and normalized cxcywh boxes [L, B, Q, 4] of every decoder
        layer; two-stage adds the encoder proposals' logits [B, S, K], boxes [B, S, 4] and the selected
        token indices [B, Q] (``select_indices`` when given).
        """
        pos = [self.position_encoding(m).to(f.dtype) for f, m in zip(feats, masks)]
        n = self.num_layers
        run = self.transformer(
            feats, masks, pos, None if self.two_stage else self.query_embed.weight,
            enc_class_embed=self.class_embed[n] if self.two_stage else None,
            enc_bbox_embed=self.bbox_embed[n] if self.two_stage else None,
            bbox_embed=self.bbox_embed if self.with_box_refine else None, select_indices=select_indices,
        )
        logits, boxes = [], []
        for lvl in range(n):
            ref = inverse_sigmoid(run.init_reference if lvl == 0 else run.references[lvl - 1])
            delta = self.bbox_embed[lvl](run.hs[lvl])
            if ref.shape[-1] == 4:
                box = delta + ref
            else:
                box = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            logits.append(self.class_embed[lvl](run.hs[lvl]))
            boxes.append(box.sigmoid())
        out: tuple[Tensor, ...] = (torch.stack(logits), torch.stack(boxes))
        if self.two_stage:
            out += (run.enc_logits, run.enc_coords.sigmoid(), run.topk)
        return out

    def outputs(self, logits: Tensor, boxes: Tensor, enc_logits: Tensor | None = None,
                enc_boxes: Tensor | None = None, topk: Tensor | None = None) -> dict[str, Any]:
        """``forward_layers``' tensors -> the reference's output dict: "pred_logits" [B, Q, K],
        "pred_boxes" [B, Q, 4] (last layer), "aux_outputs" (earlier layers), "enc_outputs" (two-stage)."""
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if enc_logits is not None:
            out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
        return out

    def losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses; targets per image: "labels" [N] 0..K-1, "boxes" [N, 4] normalized cxcywh."""
        if self.criterion is None:
            raise ValueError("DeformableDETRHead was built without a criterion (inference only); "
                             "set model.head.criterion to train")
        return self.criterion.weighted(self.criterion(outputs, targets))

    @torch.no_grad()
    def inference(self, outputs: dict[str, Any], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The ``test_topk`` best (query, class) sigmoid scores per image, boxes xyxy in ``sizes`` pixels
        (the reference's PostProcess; a query may give several labels; boxes not clipped)."""
        return sigmoid_topk_detections(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.test_topk)
