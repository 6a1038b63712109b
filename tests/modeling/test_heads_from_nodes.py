"""Faster R-CNN heads composed from nested config nodes: matcher, pooler and box head swapped by
override lines alone, shapes passed down (never written), padding read from the backbone."""
from __future__ import annotations

import torch
from torch import nn

from detres.modeling.heads.roi_heads import ConvFCHead, MultiScaleRoIAlign
from detres.modeling.layers import BalancedSampler, BoxCoder, Matcher
from tests.modeling.frcnn_utils import build_from_config
from tests.modeling.test_faster_rcnn import SMALL, _batch

SWAPS = [
    "model.roi_heads.box_pooler.sampling_ratio=2",
    "model.roi_heads.box_pooler.output_size=5",
    "model.roi_heads.box_head={_target_: ConvFCHead, conv_dims: [32, 32], fc_dims: [48], norm: gn}",
    "model.roi_heads.matcher.high=0.6",
    "model.roi_heads.matcher.low=0.4",
    "model.rpn.matcher={_target_: Matcher, high: 0.8, low: 0.2, allow_low_quality_matches: false}",
    "model.rpn.sampler.batch_size_per_image=64",
    "model.rpn.head.num_convs=2",
]


def test_default_parts_and_state_dict_keys() -> None:
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL)
    rpn, roi = model.rpn, model.roi_heads
    assert isinstance(roi.box_pooler, MultiScaleRoIAlign) and isinstance(roi.box_head, ConvFCHead)
    assert isinstance(rpn.box_coder, BoxCoder) and rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert roi.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert isinstance(rpn.matcher, Matcher) and (rpn.matcher.high, rpn.matcher.low) == (0.7, 0.3)
    assert rpn.matcher.allow_low_quality_matches and not roi.matcher.allow_low_quality_matches
    assert isinstance(roi.sampler, BalancedSampler) and roi.sampler.batch_size_per_image == 64
    assert rpn.anchor_generator.strides == [4, 8, 16, 32, 64] and roi.box_pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    keys = set(model.state_dict())
    for k in ("rpn.head.convs.0.weight", "rpn.head.objectness.weight", "rpn.head.deltas.bias",
              "roi_heads.box_head.fcs.0.weight", "roi_heads.box_head.fcs.1.bias",
              "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"):
        assert k in keys, k
    assert not any(k.startswith("roi_heads.pooler.") for k in keys)


def test_matcher_pooler_and_box_head_swapped_by_override_lines() -> None:
    torch.manual_seed(0)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", [*SMALL, *SWAPS])
    roi, rpn = model.roi_heads, model.rpn
    assert roi.box_pooler.sampling_ratio == 2 and roi.box_pooler.output_size == 5
    assert roi.box_pooler.aligned and roi.box_pooler.level_assignment == "detectron2"  # rest of the base node kept
    head = roi.box_head
    assert len(head.convs) == 2 and isinstance(head.convs[0][1], nn.GroupNorm) and head.convs[0][0].bias is None
    assert head.convs[0][0].in_channels == 64  # the neck's channels, passed down
    assert head.fcs[0].in_features == 32 * 5 * 5 and head.out_dim == 48  # conv width x the pooler's output size
    assert roi.box_predictor.cls_score.in_features == 48 and roi.box_predictor.cls_score.out_features == 4
    assert (roi.matcher.high, roi.matcher.low) == (0.6, 0.4)
    assert (rpn.matcher.high, rpn.matcher.low, rpn.matcher.allow_low_quality_matches) == (0.8, 0.2, False)
    assert rpn.sampler.batch_size_per_image == 64 and len(rpn.head.convs) == 2
    assert "roi_heads.box_head.convs.1.1.weight" in model.state_dict()

    imgs, targets = _batch()
    losses = model.train()(imgs, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.convs[0][0].weight.grad is not None and head.convs[0][0].weight.grad.abs().sum() > 0
    # IoU 1, 0.73 (>= 0.6: foreground), 0 (background), plus the appended gt box
    props = [torch.tensor([[30.0, 40.0, 140.0, 120.0], [30.0, 40.0, 110.0, 120.0], [0.0, 0.0, 20.0, 20.0]])]
    sampled, labels, _ = roi.sample_proposals(props, targets[:1])
    assert len(sampled[0]) == 4 and sorted(labels.tolist()) == [1, 1, 1, 3]
    with torch.no_grad():
        out = model.eval()(imgs)
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 for o in out)


def test_ignore_band_of_the_roi_matcher() -> None:
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", [*SMALL, "model.roi_heads.matcher.low=0.3",
                                                              "model.roi_heads.append_gt=false"])
    gt = {"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([2])}
    props = [torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 40.0], [0.0, 0.0, 100.0, 10.0]])]  # IoU 1, 0.4, 0.1
    _, labels, _ = model.roi_heads.sample_proposals(props, [gt])
    assert sorted(labels.tolist()) == [2, 3]  # foreground class 2, background K = 3; the 0.4 one ignored


def test_size_divisibility_from_backbone_unless_overridden() -> None:
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL)
    assert model.input.size_divisibility is None and model.size_divisibility == model.backbone.size_divisibility == 32
    img = torch.zeros(3, 70, 90, dtype=torch.uint8)
    assert tuple(model.preprocess([img], resize=False).tensor.shape[-2:]) == (96, 96)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", [*SMALL, "model.input.size_divisibility=64"])
    assert model.size_divisibility == 64
    assert tuple(model.preprocess([img], resize=False).tensor.shape[-2:]) == (128, 128)
