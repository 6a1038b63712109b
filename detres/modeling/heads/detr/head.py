"""DETRHead: transformer + learned queries + class and box predictors (Carion et al. 2020, Sec. 3.2)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detres.modeling.heads.detr.criterion import SetCriterion
from detres.modeling.heads.detr.transformer import Transformer
from detres.modeling.layers.mlp import MLP
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec
from detres.structures.boxes import cxcywh_to_xyxy, denormalize_boxes

_FOLLOWS = {
    "d_model": "the neck's out_channels: ChannelMapper is DETR's input_proj",
    "num_pos_feats": "half of transformer.d_model",
    "num_classes": "model.head.num_classes",
}


def child_node(node: Mapping[str, Any], where: str, key: str, value: Any, follows: str | None = None) -> dict[str, Any]:
    """``node`` with ``key`` passed down from the head: set when absent, checked when written.

    where: the node's place for messages (``DETRHead.transformer``); follows: what the value follows.
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise TypeError(f"{where} must be a node with a _target_ (e.g. {{_target_: ...}}), got {node!r}")
    out = dict(node)
    if key in out and out[key] != value:
        raise ValueError(
            f"{where}.{key} is {out[key]} but the head passes {value}; remove the key (the head "
            f"sets it) or change what it follows ({follows or _FOLLOWS[key]})"
        )
    out[key] = value
    return out


def layer_outputs(logits: Tensor, boxes: Tensor, aux_loss: bool) -> dict[str, Any]:
    """Every decoder layer's [L, B, Q, ...] predictions -> the DETR family's output dict: the last layer's
    "pred_logits" / "pred_boxes" and, with ``aux_loss``, "aux_outputs" for layers 0..L-2."""
    out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    if aux_loss:
        out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
    return out


def build_set_criterion(where: str, criterion: Mapping[str, Any] | None, matcher: Mapping[str, Any] | None,
                        num_classes: int, num_decoder_layers: int) -> nn.Module | None:
    """The DETR family's ``criterion`` node built with what the head passes down: ``num_classes``,
    ``num_decoder_layers`` and the built ``matcher`` node (None when the head has no criterion:
    an inference-only model). ``where``: the head's name for messages."""
    if criterion is None:
        return None
    if "matcher" in criterion:
        raise ValueError(f"{where}.criterion.matcher: set the matcher as model.head.matcher; the head passes it in")
    node = child_node(criterion, f"{where}.criterion", "num_classes", num_classes, "model.head.num_classes")
    node = child_node(node, f"{where}.criterion", "num_decoder_layers", num_decoder_layers,
                      "transformer.num_decoder_layers")
    return instantiate(node, matcher=instantiate(matcher) if matcher is not None else None)


@HEADS.register()
class DETRHead(nn.Module):
    """DETR's prediction head over one feature map of width ``transformer.d_model`` (the neck's output).

    Args:
        in_feature: the neck output it reads.
        num_classes: K; the class head has K+1 outputs, the last one is no-object.
        position_encoding: [B, H, W] mask -> [B, d_model, H, W] positions (``PositionEmbeddingSine`` /
            ``PositionEmbeddingLearned``).
        transformer: the encoder-decoder (``Transformer``); its ``d_model`` is the head's width.
        criterion: the set criterion (``SetCriterion``), holding the Hungarian matcher.
        num_queries: number of learned object queries.
        aux_loss: also predict (and supervise) from every intermediate decoder layer.
    """

    #: Flat keys of the former DETRHead -> their place under the head node now.
    moved_keys: ClassVar[dict[str, str]] = {
        "hidden_dim": "transformer.d_model",
        "nheads": "transformer.nhead",
        "enc_layers": "transformer.num_encoder_layers",
        "dec_layers": "transformer.num_decoder_layers",
        "ffn_dim": "transformer.ffn_dim",
        "dropout": "transformer.dropout",
        "pre_norm": "transformer.pre_norm",
        "activation": "transformer.activation",
        "cost_class": "matcher.cost_class",
        "cost_bbox": "matcher.cost_bbox",
        "cost_giou": "matcher.cost_giou",
        "ce_loss_coef": "criterion.ce_loss_coef",
        "bbox_loss_coef": "criterion.bbox_loss_coef",
        "giou_loss_coef": "criterion.giou_loss_coef",
        "eos_coef": "criterion.eos_coef",
    }

    def __init__(
        self,
        *,
        in_feature: str,
        num_classes: int,
        position_encoding: nn.Module,
        transformer: Transformer,
        criterion: SetCriterion,
        num_queries: int = 100,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        if criterion.num_classes != num_classes:
            raise ValueError(f"DETRHead: criterion.num_classes {criterion.num_classes} != num_classes {num_classes}")
        hidden_dim = transformer.d_model
        self.in_feature = in_feature
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        # Creation order (positions, transformer, queries, class, box) is the former one, so seeded
        # random initializations stay the same.
        self.position_encoding = position_encoding
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.criterion = criterion

    @classmethod
    def from_config(
        cls,
        *,
        input_shape: dict[str, ShapeSpec],
        num_classes: int,
        position_encoding: Mapping[str, Any],
        transformer: Mapping[str, Any],
        matcher: Mapping[str, Any],
        criterion: Mapping[str, Any],
        num_queries: int = 100,
        aux_loss: bool = True,
        in_feature: str | None = None,
    ) -> "DETRHead":
        """Build the child nodes with the shapes passed down.

        ``in_feature`` picks the level of ``input_shape`` (the neck's ``output_shape()``; default: the
        last one); its channels become ``transformer.d_model``, half of them the position encoding's
        ``num_pos_feats``. The ``matcher`` node is built and handed to the criterion with ``num_classes``.
        """
        if not input_shape:
            raise ValueError("DETRHead: input_shape is empty; the neck must output one feature map")
        in_feature = in_feature or list(input_shape)[-1]
        if in_feature not in input_shape:
            raise ValueError(f"DETRHead.in_feature '{in_feature}' is not one of the neck outputs {list(input_shape)}")
        width = input_shape[in_feature].channels
        pos = instantiate(child_node(position_encoding, "DETRHead.position_encoding", "num_pos_feats", width // 2))
        tr = instantiate(child_node(transformer, "DETRHead.transformer", "d_model", width))
        if "matcher" in criterion:
            raise ValueError("DETRHead.criterion.matcher: set the matcher as model.head.matcher; the head passes it in")
        match = instantiate(matcher)
        crit = instantiate(child_node(criterion, "DETRHead.criterion", "num_classes", num_classes), matcher=match)
        return cls(in_feature=in_feature, num_classes=num_classes, position_encoding=pos, transformer=tr,
                   criterion=crit, num_queries=num_queries, aux_loss=aux_loss)

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
