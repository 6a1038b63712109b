"""ROI heads of Faster R-CNN (Ren et al. 2015, Sec. 3; Girshick 2015): sample proposals, pool, classify."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from detres.modeling.layers import (
    MATCHING_MOVED_KEYS, IGNORE, NEGATIVE, BalancedSampler, BoxCoder, Matcher, box_regression_loss, crowd_overlap, level_shapes, split_crowd,
)
from detres.modeling.heads.roi_heads.pooler import boxes_to_rois
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec
from detres.structures.boxes import clip_boxes, nonempty


@HEADS.register()
class StandardROIHeads(nn.Module):
    """Box branch of Faster R-CNN: ``box_pooler`` -> ``box_head`` -> ``box_predictor``, each a config node.

    Args:
        num_classes: K foreground classes; logits have K+1 columns, background last.
        in_features: pooled levels, finest first.
        box_pooler: a ``MultiScaleRoIAlign`` (node: its ``strides`` come from the input shape;
            detectron2 output_size 7 / sampling_ratio 0 / aligned / detectron2 levels; torchvision 7 / 2 /
            not aligned / torchvision levels).
        box_head: a ``ConvFCHead`` (node: ``channels`` and ``resolution`` are passed in); any module
            with an ``out_dim`` attribute that maps [N, C, R, R] to [N, out_dim].
        box_predictor: a ``BoxPredictor`` (node: ``in_dim`` and ``num_classes`` are passed in).
        box_coder: the ``BoxCoder`` of the deltas (weights 10, 10, 5, 5).
        matcher: proposals with IoU >= high are foreground, < low background (0.5 / 0.5).
        sampler: a ``BalancedSampler`` of proposals (512 per image, a quarter foreground at most).
        append_gt: add the ground-truth boxes to the proposals in training.
        smooth_l1_beta: 0 = L1 (detectron2), 1.0/9 (torchvision); the box loss is divided by the
            number of sampled proposals in both references, the class loss is their mean CE.
        score_thresh / nms_thresh / detections_per_image: inference (per-class NMS).
        min_box_size: detections with width or height <= this are dropped before NMS
            (torchvision 0.01; detectron2 0 = only empty boxes).
        crowd_ignore: background proposals with this fraction of their area in a crowd box are ignored.
    """

    #: config keys of the flat-argument ROI heads -> their place in the nested node (for the error message).
    moved_keys: ClassVar[dict[str, str]] = {
        "pooler_resolution": "box_pooler.output_size",
        "pooler_sampling_ratio": "box_pooler.sampling_ratio",
        "pooler_aligned": "box_pooler.aligned",
        "level_assignment": "box_pooler.level_assignment",
        "conv_dims": "box_head.conv_dims",
        "fc_dims": "box_head.fc_dims",
        "head_norm": "box_head.norm",
        "cls_agnostic_bbox_reg": "box_predictor.cls_agnostic",
        **MATCHING_MOVED_KEYS,
        "pooler": "box_pooler",
    }
    #: child node -> the arguments ``from_config`` passes into it (configs never write them).
    injects: ClassVar[dict[str, tuple[str, ...]]] = {
        "box_pooler": ("strides",),
        "box_head": ("channels", "resolution"),
        "box_predictor": ("in_dim", "num_classes"),
    }

    def __init__(
        self,
        *,
        num_classes: int,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        box_pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        append_gt: bool = True,
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
        crowd_ignore: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_features = num_classes, list(in_features)
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.cls_agnostic = bool(getattr(box_predictor, "cls_agnostic", False))
        self.box_coder, self.matcher, self.sampler = box_coder, matcher, sampler
        self.append_gt, self.smooth_l1_beta = append_gt, smooth_l1_beta
        self.score_thresh, self.nms_thresh, self.detections_per_image = score_thresh, nms_thresh, detections_per_image
        self.min_box_size, self.crowd_ignore = min_box_size, crowd_ignore

    @classmethod
    def from_config(
        cls,
        *,
        input_shape: Mapping[str, ShapeSpec],
        num_classes: int,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        box_pooler: Mapping[str, Any],
        box_head: Mapping[str, Any],
        box_predictor: Mapping[str, Any],
        box_coder: Mapping[str, Any],
        matcher: Mapping[str, Any],
        sampler: Mapping[str, Any],
        **kwargs: Any,
    ) -> "StandardROIHeads":
        """Build the child nodes, passing shapes down: the pooler gets the strides of ``in_features``,
        the box head their channels and the pooler's ``output_size``, the predictor the box head's
        ``out_dim`` and ``num_classes``; the other keys go to ``__init__`` as they are."""
        strides, channels = level_shapes(input_shape, in_features, "roi_heads")
        pooler = instantiate(box_pooler, strides=strides)
        head = instantiate(box_head, channels=channels, resolution=pooler.output_size)
        if not isinstance(getattr(head, "out_dim", None), int):
            raise TypeError(
                f"roi_heads.box_head: {type(head).__name__} has no integer `out_dim` (its output feature "
                "size), which the box predictor is built for; set it in the box head's constructor"
            )
        return cls(
            num_classes=num_classes,
            in_features=in_features,
            box_pooler=pooler,
            box_head=head,
            box_predictor=instantiate(box_predictor, in_dim=head.out_dim, num_classes=num_classes),
            box_coder=instantiate(box_coder),
            matcher=instantiate(matcher),
            sampler=instantiate(sampler),
            **kwargs,
        )

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-image proposals [N_i, 4] xyxy -> class logits [sum N_i, K+1], deltas [sum N_i, 4K]."""
        return self.forward_rois([features[f] for f in self.in_features], boxes_to_rois(proposals))

    def forward_rois(self, feats: list[Tensor], rois: Tensor, static: bool = False) -> tuple[Tensor, Tensor]:
        """feats: the ``in_features`` levels; rois [N, 5] (batch index, xyxy) -> class logits [N, K+1],
        deltas [N, 4K]. ``static`` pools with shapes that depend only on N (traceable, for export)."""
        x = self.box_pooler.pool_static(feats, rois) if static else self.box_pooler.pool(feats, rois)
        return self.box_predictor(self.box_head(x))

    # ----------------------------------------------------------------------------- training
    @torch.no_grad()
    def sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sampled proposals per image, their labels [M] (K = background) and gt deltas [M, 4]."""
        out_props, out_labels, out_deltas = [], [], []
        for props, t in zip(proposals, targets):
            gt, gt_labels, crowd = split_crowd(t)
            if self.append_gt:
                props = torch.cat([props, gt])
            if gt.numel() == 0:
                labels = torch.full((len(props),), self.num_classes, dtype=torch.int64, device=props.device)
                matched = torch.zeros_like(props)
            else:
                idx, match = self.matcher(box_iou(gt, props))
                labels = gt_labels[idx].clone()
                labels[match == NEGATIVE] = self.num_classes
                labels[match == IGNORE] = -1
                matched = gt[idx]
            if crowd.numel():
                labels[(labels == self.num_classes) & (crowd_overlap(props, crowd) >= self.crowd_ignore)] = -1
            pos, neg = self.sampler(labels, self.num_classes)
            keep = torch.cat([pos, neg])
            out_props.append(props[keep])
            out_labels.append(labels[keep])
            out_deltas.append(self.box_coder.encode(props[keep], matched[keep]))
        return out_props, torch.cat(out_labels), torch.cat(out_deltas)

    def losses(self, features: dict[str, Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``loss_cls`` (mean CE over sampled proposals) and ``loss_box`` (summed over foreground,
        divided by the number of sampled proposals)."""
        props, labels, gt_deltas = self.sample_proposals(proposals, targets)
        logits, deltas = self(features, props)
        loss_cls = F.cross_entropy(logits, labels, reduction="mean") if labels.numel() else logits.sum() * 0.0
        fg = torch.nonzero((labels >= 0) & (labels < self.num_classes), as_tuple=True)[0]
        if self.cls_agnostic:
            pred = deltas[fg]
        else:
            cols = labels[fg, None] * 4 + torch.arange(4, device=deltas.device)
            pred = torch.gather(deltas[fg], 1, cols)
        loss_box = box_regression_loss(pred, gt_deltas[fg], self.smooth_l1_beta) / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # ----------------------------------------------------------------------------- inference
    def inference(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image {"boxes" [D, 4] xyxy in input pixels, "scores" [D], "labels" [D] 0..K-1},
        by descending score: softmax, decode, clip, threshold, drop small boxes, per-class NMS, top-k."""
        probs, boxes = self.scores_and_boxes(logits, deltas, torch.cat(proposals))
        return self.select(probs, boxes, [len(p) for p in proposals], image_sizes)

    def scores_and_boxes(self, logits: Tensor, deltas: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor]:
        """Class probabilities [N, K] (softmax, background dropped) and decoded per-class boxes
        [N, K or 1, 4] of [N, 4] xyxy proposals."""
        probs = F.softmax(logits, dim=-1)[:, : self.num_classes]
        return probs, self.box_coder.decode(deltas, proposals).view(probs.shape[0], -1, 4)

    def select(
        self, probs: Tensor, boxes_all: Tensor, counts: list[int], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``inference`` after softmax and decoding: class probabilities [sum N_i, K] and per-class
        boxes [sum N_i, K or 1, 4] of ``counts[i]`` proposals per image -> detections per image."""
        k = self.num_classes
        results = []
        start = 0
        for n, size in zip(counts, image_sizes):
            scores = probs[start:start + n]
            boxes = boxes_all[start:start + n]
            start += n
            if self.cls_agnostic:
                boxes = boxes.expand(n, k, 4)
            valid = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1)
            if not bool(valid.all()):
                boxes, scores = boxes[valid], scores[valid]
            boxes = clip_boxes(boxes, size)
            mask = scores > self.score_thresh
            rows, labels = torch.nonzero(mask, as_tuple=True)
            boxes, scores = boxes[mask], scores[mask]
            keep = nonempty(boxes, self.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
