"""Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017): backbone -> neck -> RPN -> ROI heads."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from detres.modeling.build import build_backbone_and_neck
from detres.modeling.detectors.base import Detector, GraphSpec, InputConfig, TracedCall
from detres.modeling.heads.roi_heads.pooler import boxes_to_rois
from detres.registry import DETECTORS, instantiate
from detres.structures import ImageBatch


@DETECTORS.register()
class FasterRCNN(Detector):
    """Two-stage detector. Built from config nodes by ``from_config``; modules by ``__init__``.

    Args:
        backbone: returns {"res2".."res5"}; neck: returns {"p2".."p6"} (or None: heads read the backbone).
        rpn: an ``RPN``; roi_heads: a ``StandardROIHeads``.
        input: the ``input:`` block (format, normalization, test resize, padding).
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module | None, rpn: nn.Module, roi_heads: nn.Module, input: InputConfig | None = None
    ) -> None:
        super().__init__(input)
        self.backbone, self.neck, self.rpn, self.roi_heads = backbone, neck, rpn, roi_heads

    @classmethod
    def from_config(
        cls,
        *,
        input: InputConfig,
        backbone: Mapping[str, Any],
        neck: Mapping[str, Any] | None = None,
        rpn: Mapping[str, Any],
        roi_heads: Mapping[str, Any],
    ) -> "FasterRCNN":
        """Build backbone and neck, then the heads with ``input_shape=neck.output_shape()``."""
        bb, nk = build_backbone_and_neck(backbone, neck)
        shape = (nk or bb).output_shape()
        return cls(
            bb, nk, instantiate(rpn, input_shape=shape), instantiate(roi_heads, input_shape=shape),
            InputConfig(**input) if isinstance(input, Mapping) else input,
        )

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] normalized -> pyramid {"p2".."p6": [B, C, H/2^k, W/2^k]}."""
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats

    def feature_names(self) -> list[str]:
        """The pyramid levels ``features`` returns, in order."""
        return list((self.neck if self.neck is not None else self.backbone).output_shape())

    def dense(self, x: Tensor) -> tuple[Tensor, ...]:
        """[B, 3, H, W] normalized -> (pyramid levels in ``feature_names`` order, RPN objectness
        [B, A, H_l, W_l] per RPN level, RPN deltas [B, 4A, H_l, W_l] per RPN level): the traceable
        first stage."""
        feats = self.features(x)
        logits, deltas = self.rpn.head([feats[f] for f in self.rpn.in_features])
        return (*[feats[k] for k in self.feature_names()], *logits, *deltas)

    def box_stage(self, *args: Tensor, static: bool = False) -> tuple[Tensor, Tensor]:
        """(pooled levels [B, C, H_l, W_l]..., rois [R, 5] (batch index, xyxy input pixels)) -> class
        logits [R, K+1], box deltas [R, 4K]: the traceable second stage."""
        *feats, rois = args
        return self.roi_heads.forward_rois(list(feats), rois, static=static)

    def graphs(self) -> dict[str, GraphSpec]:
        """``dense`` (images -> pyramid + RPN outputs) and ``box`` (pooled levels + RoIs -> class
        logits, deltas; pools every RoI from every level, so its shapes depend only on R)."""
        levels, pooled = list(self.rpn.in_features), list(self.roi_heads.in_features)
        image_dims = {0: ("batch", 1), 2: ("height", 32), 3: ("width", 32)}
        dense = GraphSpec(
            TracedCall(self, self.dense), ["images"],
            self.feature_names() + [f"logits_{lv}" for lv in levels] + [f"deltas_{lv}" for lv in levels],
            {"images": image_dims},
            checked=[f"logits_{lv}" for lv in levels] + [f"deltas_{lv}" for lv in levels],
        )
        box_dims: dict[str, dict[int, tuple[str, int]]] = {
            f: {0: ("batch", 1), 2: (f"{f}_h", 1), 3: (f"{f}_w", 1)} for f in pooled
        }
        box_dims["rois"] = {0: ("rois", 1)}
        box = GraphSpec(
            TracedCall(self, self.box_stage, static=True), [*pooled, "rois"], ["class_logits", "box_deltas"], box_dims
        )
        return {"dense": dense, "box": box}

    def forward_raw(self, batch: ImageBatch) -> dict[str, Any]:
        """Raw outputs: ``features``, ``rpn`` (per level ``logits`` [B, A, H, W], ``deltas`` [B, 4A, H, W],
        ``anchors``), ``proposals`` per image [P_i, 4] xyxy in input pixels with ``proposal_logits``
        [P_i] (descending), ``class_logits`` [sum P_i, K+1] (background last), ``box_deltas``
        [sum P_i, 4K] (before the box coder's weights). The two traceable stages run through
        ``run_graph`` ("dense", "box"); proposal selection between them is eager."""
        names, levels = self.feature_names(), list(self.rpn.in_features)
        outs = self.run_graph("dense", self.dense, batch.tensor)
        feats = dict(zip(names, outs[: len(names)]))
        logits = list(outs[len(names): len(names) + len(levels)])
        deltas = list(outs[len(names) + len(levels):])
        anchors = self.rpn.anchor_generator([tuple(x.shape[-2:]) for x in logits], tuple(batch.tensor.shape[-2:]))
        rpn_out = {"logits": logits, "deltas": deltas, "anchors": anchors}
        props = self.rpn.proposals(rpn_out, batch.image_sizes)
        boxes = [p[0] for p in props]
        rois = boxes_to_rois(boxes)
        cls_logits, box_deltas = self.run_graph(
            "box", self.box_stage, *[feats[f] for f in self.roi_heads.in_features], rois
        )
        return {
            "features": feats, "rpn": rpn_out, "proposals": boxes, "proposal_logits": [p[1] for p in props],
            "class_logits": cls_logits, "box_deltas": box_deltas,
        }

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}. targets: per image "boxes" [N, 4]
        xyxy in the batch's pixels, "labels" [N] 0..K-1, optional "iscrowd" [N] bool (ignore regions)."""
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} needs 'boxes' [N, 4] xyxy and 'labels' [N]; got keys {sorted(t)}")
        feats = self.features(batch.tensor)
        rpn_out = self.rpn(feats, tuple(batch.tensor.shape[-2:]))
        losses = self.rpn.losses(rpn_out, targets)
        proposals = [p[0] for p in self.rpn.proposals(rpn_out, batch.image_sizes)]
        losses.update(self.roi_heads.losses(feats, proposals, targets))
        return losses

    def postprocess(
        self, raw: dict[str, Any], batch: ImageBatch, orig_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image {"boxes" [D, 4] xyxy in the original image's pixels, "scores" [D], "labels" [D]}."""
        dets = self.roi_heads.inference(raw["class_logits"], raw["box_deltas"], raw["proposals"], batch.image_sizes)
        for d, size, orig in zip(dets, batch.image_sizes, orig_sizes):
            d["boxes"] = self.rescale_boxes(d["boxes"], size, orig)
        return dets
