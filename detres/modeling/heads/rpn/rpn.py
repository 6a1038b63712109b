"""Region Proposal Network (Ren et al. 2015): shared conv head on every level, anchors, proposals, losses."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from detres.modeling.heads.rpn.anchor_generator import AnchorGenerator
from detres.modeling.layers import (
    MATCHING_MOVED_KEYS, IGNORE, NEGATIVE, BalancedSampler, BoxCoder, Matcher, box_regression_loss, crowd_overlap, level_shapes, split_crowd,
)
from detres.registry import HEADS, instantiate
from detres.structures import ShapeSpec
from detres.structures.boxes import clip_boxes, nonempty

DEFAULT_LEVELS = ("p2", "p3", "p4", "p5", "p6")


@HEADS.register()
class RPNHead(nn.Module):
    """``num_convs`` shared 3x3 conv + ReLU, then 1x1 objectness (A) and deltas (4A) on every level.

    Args:
        channels: input channels of every level (injected by the RPN).
        num_anchors: A, anchors per location (injected by the RPN from its anchor generator).
        num_convs: shared 3x3 convs (1; torchvision v2 uses 2).
    """

    def __init__(self, channels: int, num_anchors: int, num_convs: int = 1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs))
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # both references: N(0, 0.01), zero bias
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness [B, A, H, W] and deltas [B, 4A, H, W]."""
        logits, deltas = [], []
        for x in feats:
            for conv in self.convs:
                x = F.relu(conv(x), inplace=True)
            logits.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return logits, deltas


@HEADS.register()
class RPN(nn.Module):
    """Anchors + RPNHead + proposal selection + losses, each part a config node.

    Args:
        in_features: pyramid levels used, finest first.
        anchor_generator: an ``AnchorGenerator`` (node: its ``strides`` come from the input shape).
        head: an ``RPNHead`` (node: its ``channels`` and ``num_anchors`` are passed in).
        box_coder: the proposals' ``BoxCoder`` (weights 1, 1, 1, 1).
        matcher: anchors with IoU >= high are positive, < low negative (0.7 / 0.3, low-quality matches on).
        sampler: a ``BalancedSampler`` of anchors (256 per image, half positive at most).
        pre_nms_topk_train/test: top anchors kept per level before NMS.
        post_nms_topk_train/test: proposals kept per image after NMS (over all levels).
        nms_thresh: NMS IoU, applied per level (both references).
        min_size: proposals with width or height <= this are dropped after clipping.
        smooth_l1_beta: 0 = L1 (detectron2), 1/9 (torchvision).
        loss_normalizer: ``batch_size`` divides by the sampler's batch_size_per_image * images
            (detectron2), ``sampled`` by the number of sampled anchors (torchvision).
        crowd_ignore: negatives with at least this fraction of their area in a crowd box are ignored.
    """

    #: config keys of the flat-argument RPN -> their place in the nested node (for the error message).
    moved_keys: ClassVar[dict[str, str]] = {
        "anchor_sizes": "anchor_generator.sizes",
        "aspect_ratios": "anchor_generator.aspect_ratios",
        "anchor_offset": "anchor_generator.offset",
        "round_anchors": "anchor_generator.round_anchors",
        "strides_from_image": "anchor_generator.strides_from_image",
        "num_convs": "head.num_convs",
        **MATCHING_MOVED_KEYS,
    }
    #: child node -> the arguments ``from_config`` passes into it (configs never write them).
    injects: ClassVar[dict[str, tuple[str, ...]]] = {
        "anchor_generator": ("strides",),
        "head": ("channels", "num_anchors"),
    }

    def __init__(
        self,
        *,
        in_features: Sequence[str] = DEFAULT_LEVELS,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        pre_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 1000,
        post_nms_topk_test: int = 1000,
        nms_thresh: float = 0.7,
        min_size: float = 0.0,
        smooth_l1_beta: float = 0.0,
        loss_normalizer: str = "batch_size",
        crowd_ignore: float = 0.5,
    ) -> None:
        super().__init__()
        if loss_normalizer not in ("batch_size", "sampled"):
            raise ValueError(f"rpn.loss_normalizer must be 'batch_size' or 'sampled', got {loss_normalizer!r}")
        self.in_features = list(in_features)
        self.anchor_generator, self.head = anchor_generator, head
        self.box_coder, self.matcher, self.sampler = box_coder, matcher, sampler
        self.pre_nms_topk = {True: pre_nms_topk_train, False: pre_nms_topk_test}
        self.post_nms_topk = {True: post_nms_topk_train, False: post_nms_topk_test}
        self.nms_thresh, self.min_size = nms_thresh, min_size
        self.smooth_l1_beta, self.loss_normalizer, self.crowd_ignore = smooth_l1_beta, loss_normalizer, crowd_ignore

    @classmethod
    def from_config(
        cls,
        *,
        input_shape: Mapping[str, ShapeSpec],
        in_features: Sequence[str] = DEFAULT_LEVELS,
        anchor_generator: Mapping[str, Any],
        head: Mapping[str, Any],
        box_coder: Mapping[str, Any],
        matcher: Mapping[str, Any],
        sampler: Mapping[str, Any],
        **kwargs: Any,
    ) -> "RPN":
        """Build the child nodes with the shapes of ``in_features`` in ``input_shape`` (the neck's
        ``output_shape()``); the other keys go to ``__init__`` as they are."""
        strides, channels = level_shapes(input_shape, in_features, "rpn")
        anchors = instantiate(anchor_generator, strides=strides)
        num_anchors = set(anchors.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                "rpn.anchor_generator: every level needs the same number of anchors per location "
                f"(len(sizes[l]) * len(aspect_ratios[l])), got {anchors.num_anchors}"
            )
        return cls(
            in_features=in_features,
            anchor_generator=anchors,
            head=instantiate(head, channels=channels, num_anchors=num_anchors.pop()),
            box_coder=instantiate(box_coder),
            matcher=instantiate(matcher),
            sampler=instantiate(sampler),
            **kwargs,
        )

    def forward(self, features: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, list[Tensor]]:
        """Raw head outputs per level: ``logits`` [B, A, H, W], ``deltas`` [B, 4A, H, W] and
        ``anchors`` [H*W*A, 4] xyxy (location-major, anchor-minor). image_size: padded (H, W)."""
        feats = [features[f] for f in self.in_features]
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator([tuple(x.shape[-2:]) for x in feats], image_size)
        return {"logits": logits, "deltas": deltas, "anchors": anchors}

    @staticmethod
    def flatten(out: dict[str, list[Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level logits [B, H*W*A] and deltas [B, H*W*A, 4] in the anchors' order."""
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in out["logits"]]
        deltas = []
        for x in out["deltas"]:
            b, _, h, w = x.shape
            deltas.append(x.view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return logits, deltas

    @torch.no_grad()
    def proposals(self, out: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """Per image (boxes [P, 4] xyxy in input pixels, objectness logits [P]), descending logit.

        Top-k anchors per level, decode, clip to the unpadded image, drop small boxes, NMS per
        level, keep the best ``post_nms_topk`` of the image.
        """
        logits, deltas = self.flatten(out)
        k_pre, k_post = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        sel_boxes, sel_logits, sel_levels = [], [], []
        for lvl, (lg, dl, anc) in enumerate(zip(logits, deltas, out["anchors"])):
            k = min(k_pre, lg.shape[1])
            top, idx = lg.detach().topk(k, dim=1)
            d = torch.gather(dl.detach(), 1, idx[..., None].expand(-1, -1, 4))
            boxes = self.box_coder.decode(d.reshape(-1, 4), anc[idx.reshape(-1)]).view(idx.shape[0], k, 4)
            sel_boxes.append(boxes)
            sel_logits.append(top)
            sel_levels.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
        boxes_all, logits_all, levels = torch.cat(sel_boxes, 1), torch.cat(sel_logits, 1), torch.cat(sel_levels)
        results = []
        for i, size in enumerate(image_sizes):
            boxes, scores, lv = boxes_all[i], logits_all[i], levels
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                if self.training:
                    raise FloatingPointError("RPN produced non-finite proposals: the training has diverged")
                boxes, scores, lv = boxes[valid], scores[valid], lv[valid]
            boxes = clip_boxes(boxes, size)
            keep = nonempty(boxes, self.min_size)
            boxes, scores, lv = boxes[keep], scores[keep], lv[keep]
            keep = batched_nms(boxes, scores, lv, self.nms_thresh)[:k_post]
            results.append((boxes[keep], scores[keep]))
        return results

    def _label_anchors(self, anchors: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Labels [N] in {-1, 0, 1} and matched gt boxes [N, 4] for one image's anchors."""
        gt, _, crowd = split_crowd(target)
        if gt.numel() == 0:
            labels = torch.full((anchors.shape[0],), NEGATIVE, dtype=torch.int8, device=anchors.device)
            matched = torch.zeros_like(anchors)
        else:
            idx, labels = self.matcher(box_iou(gt, anchors))
            matched = gt[idx]
        if crowd.numel():
            labels[(labels == NEGATIVE) & (crowd_overlap(anchors, crowd) >= self.crowd_ignore)] = IGNORE
        return labels, matched

    def losses(self, out: dict[str, list[Tensor]], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``loss_rpn_cls`` (BCE on sampled anchors) and ``loss_rpn_box`` (on positive anchors)."""
        logits, deltas = self.flatten(out)
        logits, deltas = torch.cat(logits, 1), torch.cat(deltas, 1)
        anchors = torch.cat(out["anchors"])
        pos_l, neg_l, tgt_l = [], [], []
        for i, t in enumerate(targets):
            labels, matched = self._label_anchors(anchors, t)
            pos, neg = self.sampler(labels.long(), NEGATIVE)
            pos_l.append(pos + i * anchors.shape[0])
            neg_l.append(neg + i * anchors.shape[0])
            tgt_l.append(self.box_coder.encode(anchors[pos], matched[pos]))
        pos, neg = torch.cat(pos_l), torch.cat(neg_l)
        flat_logits, flat_deltas = logits.reshape(-1), deltas.reshape(-1, 4)
        sampled = torch.cat([pos, neg])
        cls_target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float()
        loss_cls = F.binary_cross_entropy_with_logits(flat_logits[sampled], cls_target, reduction="sum")
        loss_box = box_regression_loss(flat_deltas[pos], torch.cat(tgt_l), self.smooth_l1_beta)
        if self.loss_normalizer == "batch_size":
            norm = float(self.sampler.batch_size_per_image * len(targets))
        else:
            norm = float(max(sampled.numel(), 1))
        return {"loss_rpn_cls": loss_cls / norm, "loss_rpn_box": loss_box / norm}
