"""RPN: box coder and matcher against torchvision, and RPN loss parity with torchvision's
RegionProposalNetwork where sampling is deterministic (sampler batch larger than all anchors, so
every non-ignored anchor is used): loss_rpn_cls and loss_rpn_box agree to 1e-5 (relative)."""
from __future__ import annotations

import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead as TVRPNHead

from detres.modeling.heads.rpn import RPN
from detres.modeling.layers import BoxCoder, Matcher
from detres.structures import ShapeSpec


def test_box_coder_round_trip_and_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 50], 1)
    deltas = torch.randn(50, 8, generator=g)
    coder, tv = BoxCoder((10, 10, 5, 5)), tv_utils.BoxCoder((10, 10, 5, 5))
    torch.testing.assert_close(coder.decode(deltas, boxes), tv.decode_single(deltas, boxes), rtol=0, atol=0)
    dec = coder.decode(deltas[:, :4] * 0.1, boxes)
    torch.testing.assert_close(coder.encode(boxes, dec), deltas[:, :4] * 0.1, atol=1e-4, rtol=1e-4)


def test_matcher_low_quality_equals_torchvision() -> None:
    iou = torch.tensor([[0.1, 0.65, 0.2, 0.65], [0.9, 0.1, 0.4, 0.0]])
    idx, labels = Matcher(0.7, 0.3, True)(iou)
    tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, -1, 1]
    assert torch.equal(idx[labels == 1], tv[tv >= 0])


def test_rpn_loss_parity_with_torchvision() -> None:
    torch.manual_seed(0)
    shape = {f"p{k}": ShapeSpec(8, 2**k) for k in (2, 3)}
    rpn = RPN.from_config(
        input_shape=shape, in_features=["p2", "p3"],
        anchor_generator={"_target_": "AnchorGenerator", "sizes": [[16], [32]], "aspect_ratios": [[0.5, 1.0, 2.0]],
                          "round_anchors": True, "strides_from_image": True},
        head={"_target_": "RPNHead"}, box_coder={"_target_": "BoxCoder"},
        matcher={"_target_": "Matcher", "high": 0.7, "low": 0.3, "allow_low_quality_matches": True},
        sampler={"_target_": "BalancedSampler", "batch_size_per_image": 10**7, "positive_fraction": 0.5},
        smooth_l1_beta=1 / 9, loss_normalizer="sampled", min_size=1e-3,
    ).train()
    assert rpn.anchor_generator.strides == [4, 8] and rpn.head.objectness.out_channels == 3
    tv = RegionProposalNetwork(
        TVAnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2), TVRPNHead(8, 3),
        0.7, 0.3, 10**7, 0.5, dict(training=2000, testing=1000), dict(training=2000, testing=1000), 0.7,
    ).train()
    sd = {"head.convs.0.weight": tv.head.conv[0][0].weight, "head.convs.0.bias": tv.head.conv[0][0].bias,
          "head.objectness.weight": tv.head.cls_logits.weight, "head.objectness.bias": tv.head.cls_logits.bias,
          "head.deltas.weight": tv.head.bbox_pred.weight, "head.deltas.bias": tv.head.bbox_pred.bias}
    rpn.load_state_dict(sd)
    feats = {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([2])}]
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (60, 50)])
    tv_props, tv_losses = tv(images, dict(feats.items()), targets)
    out = rpn(feats, (64, 64))
    losses = rpn.losses(out, targets)
    torch.testing.assert_close(losses["loss_rpn_cls"], tv_losses["loss_objectness"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["loss_rpn_box"], tv_losses["loss_rpn_box_reg"], rtol=1e-5, atol=1e-7)
    props = rpn.proposals(out, images.image_sizes)
    for (boxes, _), ref in zip(props, tv_props):
        assert boxes.shape == ref.shape
        d = (boxes[:, None] - ref[None]).abs().amax(-1)
        assert d.min(1).values.max() < 1e-4
