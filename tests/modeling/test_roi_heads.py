"""ROI heads: pooler and inference against torchvision's RoIHeads, and box-branch loss parity where
sampling is deterministic (sampler batch larger than all proposals; fg/bg thresholds equal, so no
proposal is ignored): loss_cls and loss_box agree with torchvision's to 1e-5 (relative)."""
from __future__ import annotations

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign as TVPooler

from detres.modeling.heads.roi_heads import StandardROIHeads, assign_levels
from detres.structures import ShapeSpec

SHAPE = {f"p{k}": ShapeSpec(8, 2**k) for k in (2, 3, 4, 5)}


def _pair(num_classes: int = 4) -> tuple[StandardROIHeads, RoIHeads]:
    torch.manual_seed(0)
    ours = StandardROIHeads.from_config(
        input_shape=SHAPE, num_classes=num_classes,
        box_pooler={"_target_": "MultiScaleRoIAlign", "sampling_ratio": 2, "aligned": False, "level_assignment": "torchvision"},
        box_head={"_target_": "ConvFCHead", "fc_dims": [32, 32]}, box_predictor={"_target_": "BoxPredictor"},
        box_coder={"_target_": "BoxCoder", "weights": [10.0, 10.0, 5.0, 5.0]},
        matcher={"_target_": "Matcher", "high": 0.5, "low": 0.5},
        sampler={"_target_": "BalancedSampler", "batch_size_per_image": 10**7, "positive_fraction": 0.25},
        smooth_l1_beta=1 / 9, score_thresh=0.05, min_box_size=0.01,
    )
    assert ours.box_pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32] and ours.box_head.fcs[0].in_features == 8 * 49
    tv = RoIHeads(TVPooler(["0", "1", "2", "3"], 7, 2), TwoMLPHead(8 * 49, 32), FastRCNNPredictor(32, num_classes + 1),
                  0.5, 0.5, 10**7, 0.25, None, 0.05, 0.5, 100)
    with torch.no_grad():
        tv.box_predictor.cls_score.weight.normal_(0, 0.3)
        tv.box_predictor.bbox_pred.weight.normal_(0, 0.3)
    rows = list(range(1, num_classes + 1)) + [0]  # torchvision: background first; detres: last
    sd = {"box_head.fcs.0.weight": tv.box_head.fc6.weight, "box_head.fcs.0.bias": tv.box_head.fc6.bias,
          "box_head.fcs.1.weight": tv.box_head.fc7.weight, "box_head.fcs.1.bias": tv.box_head.fc7.bias,
          "box_predictor.cls_score.weight": tv.box_predictor.cls_score.weight[rows],
          "box_predictor.cls_score.bias": tv.box_predictor.cls_score.bias[rows],
          "box_predictor.bbox_pred.weight": tv.box_predictor.bbox_pred.weight[4:],
          "box_predictor.bbox_pred.bias": tv.box_predictor.bbox_pred.bias[4:]}
    ours.load_state_dict(sd)
    return ours, tv


def _inputs() -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    g = torch.Generator().manual_seed(1)
    feats = {f"p{k}": torch.randn(2, 8, 128 // 2**k, 128 // 2**k, generator=g) for k in (2, 3, 4, 5)}
    props = []
    for _ in range(2):
        xy = torch.rand(60, 2, generator=g) * 90
        props.append(torch.cat([xy, xy + 4 + torch.rand(60, 2, generator=g) * 60], 1).clamp(max=120))
    return feats, props, [(120, 120), (110, 100)]


def test_level_assignment_canonical() -> None:
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 10.0, 10.0], [0, 0, 1000.0, 1000.0]])
    for style in ("detectron2", "torchvision"):
        assert assign_levels(boxes, 2, 5, 224, 4, style).tolist() == [2, 1, 0, 3]


def test_inference_equals_torchvision() -> None:
    ours, tv = _pair()
    ours.eval(), tv.eval()
    feats, props, sizes = _inputs()
    with torch.no_grad():
        ref, _ = tv({str(i): v for i, v in enumerate(feats.values())}, props, sizes)
        logits, deltas = ours(feats, props)
        got = ours.inference(logits, deltas, props, sizes)
    for o, r in zip(got, ref):
        assert len(o["boxes"]) == len(r["boxes"]) > 5
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], r["scores"], atol=1e-6, rtol=0)
        assert torch.equal(o["labels"] + 1, r["labels"])


def test_loss_parity_with_torchvision() -> None:
    ours, tv = _pair()
    ours.train(), tv.train()
    feats, props, _ = _inputs()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 110.0, 100.0]]), "labels": torch.tensor([0, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    _, tv_losses = tv({str(i): v for i, v in enumerate(feats.values())}, props, [(120, 120), (110, 100)], tv_targets)
    losses = ours.losses(feats, props, targets)
    torch.testing.assert_close(losses["loss_cls"], tv_losses["loss_classifier"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["loss_box"], tv_losses["loss_box_reg"], rtol=1e-5, atol=1e-7)
    assert losses["loss_box"] > 0
