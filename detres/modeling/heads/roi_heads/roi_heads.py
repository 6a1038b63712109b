"""ROI heads of Faster R-CNN (Ren et al. 2015, Sec. 3; Girshick 2015): sample proposals, pool, classify."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from detres.modeling.heads.roi_heads.box_head import BoxPredictor, ConvFCHead
from detres.modeling.heads.roi_heads.pooler import MultiScaleRoIAlign, boxes_to_rois
from detres.modeling.heads.rpn.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder
from detres.modeling.heads.rpn.losses import box_regression_loss, crowd_overlap, split_crowd
from detres.modeling.heads.rpn.matcher import IGNORE, NEGATIVE, Matcher, sample_balanced
from detres.registry import HEADS
from detres.structures import ShapeSpec
from detres.structures.boxes import clip_boxes, nonempty


@HEADS.register()
class StandardROIHeads(nn.Module):
    """Box branch of Faster R-CNN: RoIAlign -> ``ConvFCHead`` -> ``BoxPredictor``.

    Args:
        input_shape: the neck's ``output_shape()`` (injected).
        num_classes: K foreground classes; logits have K+1 columns, background last.
        in_features: pooled levels, finest first.
        pooler_resolution / pooler_sampling_ratio / pooler_aligned / level_assignment: see
            ``MultiScaleRoIAlign`` (detectron2: 7 / 0 / True / detectron2; torchvision: 7 / 2 / False / torchvision).
        conv_dims / fc_dims / head_norm: see ``ConvFCHead``.
        cls_agnostic_bbox_reg: one box per proposal instead of one per class.
        box_weights / scale_clamp: the ``BoxCoder`` of the deltas (10, 10, 5, 5).
        fg_iou / bg_iou: proposals with IoU >= fg are foreground, < bg background.
        batch_size_per_image / positive_fraction: the proposal sampler (512, 0.25).
        append_gt: add the ground-truth boxes to the proposals in training.
        smooth_l1_beta: 0 = L1 (detectron2), 1.0/9 (torchvision); the box loss is divided by the
            number of sampled proposals in both references, the class loss is their mean CE.
        score_thresh / nms_thresh / detections_per_image: inference (per-class NMS).
        min_box_size: detections with width or height <= this are dropped before NMS
            (torchvision 0.01; detectron2 0 = only empty boxes).
        crowd_ignore: background proposals with this fraction of their area in a crowd box are ignored.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 0,
        pooler_aligned: bool = True,
        level_assignment: str = "detectron2",
        conv_dims: Sequence[int] = (),
        fc_dims: Sequence[int] = (1024, 1024),
        head_norm: str = "",
        cls_agnostic_bbox_reg: bool = False,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
        fg_iou: float = 0.5,
        bg_iou: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        append_gt: bool = True,
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
        crowd_ignore: float = 0.5,
    ) -> None:
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"roi_heads.in_features {missing} are not neck outputs {list(input_shape)}")
        chans = {input_shape[f].channels for f in in_features}
        if len(chans) != 1:
            raise ValueError(f"roi_heads.in_features must share one channel count, got {sorted(chans)}")
        self.num_classes, self.in_features = num_classes, list(in_features)
        self.pooler = MultiScaleRoIAlign(
            [input_shape[f].stride for f in in_features], pooler_resolution, pooler_sampling_ratio,
            pooler_aligned, level_assignment,
        )
        self.box_head = ConvFCHead(chans.pop(), pooler_resolution, conv_dims, fc_dims, head_norm)
        self.box_predictor = BoxPredictor(self.box_head.out_dim, num_classes, cls_agnostic_bbox_reg)
        self.cls_agnostic = cls_agnostic_bbox_reg
        self.box_coder = BoxCoder(box_weights, scale_clamp)
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
        self.batch_size_per_image, self.positive_fraction, self.append_gt = batch_size_per_image, positive_fraction, append_gt
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh, self.nms_thresh, self.detections_per_image = score_thresh, nms_thresh, detections_per_image
        self.min_box_size, self.crowd_ignore = min_box_size, crowd_ignore

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-image proposals [N_i, 4] xyxy -> class logits [sum N_i, K+1], deltas [sum N_i, 4K]."""
        return self.forward_rois([features[f] for f in self.in_features], boxes_to_rois(proposals))

    def forward_rois(self, feats: list[Tensor], rois: Tensor, static: bool = False) -> tuple[Tensor, Tensor]:
        """feats: the ``in_features`` levels; rois [N, 5] (batch index, xyxy) -> class logits [N, K+1],
        deltas [N, 4K]. ``static`` pools with shapes that depend only on N (traceable, for export)."""
        x = self.pooler.pool_static(feats, rois) if static else self.pooler.pool(feats, rois)
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
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction, self.num_classes)
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
