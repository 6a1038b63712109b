"""FasterRCNN training: finite losses with an empty image, overfitting one batch, gradient flow,
and a clear error for a checkpoint that does not fit."""
from __future__ import annotations

import time

import pytest
import torch

import detres
from tests.modeling.frcnn_utils import build_from_config

SMALL = ["model.input.min_size_test=256", "model.input.max_size_test=256", "model.neck.out_channels=64",
         "model.roi_heads.box_head.fc_dims=[128,128]", "model.backbone.norm=bn", "model.rpn.post_nms_topk_train=200",
         "model.roi_heads.sampler.batch_size_per_image=64", "num_classes=3"]


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 255, (3, 192, 256), generator=g, dtype=torch.uint8),
            torch.randint(0, 255, (3, 224, 160), generator=g, dtype=torch.uint8)]
    imgs[0][:, 40:120, 30:140] = 250  # a bright object where the box is
    imgs[1][:, 20:90, 40:120] = 10
    targets = [
        {"boxes": torch.tensor([[30.0, 40.0, 140.0, 120.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[40.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([2])},
    ]
    return imgs, targets


def test_losses_finite_with_empty_image_and_crowd() -> None:
    torch.manual_seed(0)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL).train()
    imgs, targets = _batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    targets[0]["iscrowd"] = torch.tensor([False])
    losses = model(imgs, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_gradients_reach_unfrozen_stages_only() -> None:
    torch.manual_seed(0)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL).train()  # freeze_at 2: stem + res2
    imgs, targets = _batch()
    sum(model(imgs, targets).values()).backward()
    bb = model.backbone
    assert bb.conv1.weight.grad is None and all(p.grad is None for p in bb.layer1.parameters())
    for stage in (bb.layer2, bb.layer3, bb.layer4):
        grads = [p.grad for p in stage.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_eval_outputs_in_original_pixels() -> None:
    torch.manual_seed(0)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL).eval()
    imgs, _ = _batch()
    with torch.no_grad():
        out = model(imgs)
    for o, im in zip(out, imgs):
        assert o["boxes"].shape[1] == 4 and len(o["scores"]) == len(o["labels"]) <= 100
        if len(o["boxes"]):
            assert o["boxes"][:, 2].max() <= im.shape[2] + 1e-3 and o["boxes"][:, 3].max() <= im.shape[1] + 1e-3


def test_checkpoint_that_does_not_fit_names_the_key(tmp_path) -> None:
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL)
    other = build_from_config("faster_rcnn_r18_fpn_1x_coco", [*SMALL[:-1], "num_classes=5"])
    torch.save({"format": "detres", "model": other.state_dict()}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"roi_heads\.box_predictor\.cls_score\.weight.*num_classes"):
        detres.load_checkpoint(model, tmp_path / "m.pth")


@pytest.mark.slow
def test_overfit_one_batch() -> None:
    """ResNet-18, ~200-256 px, 2 images: the total loss falls at least 5x within 200 iterations (~40 normally)."""
    torch.manual_seed(0)
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", SMALL).train()
    imgs, targets = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    start, first, last = time.time(), None, None
    for it in range(200):
        losses = model(imgs, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        first = first if first is not None else total.item()
        last = total.item()
        if last < first / 8:
            break
    print(f"overfit: {first:.3f} -> {last:.3f} in {it + 1} iters, {time.time() - start:.1f}s")
    assert last < first / 5


def test_convert_cli_torchvision_to_detres(tmp_path) -> None:
    """``detres convert --from torchvision``: 91 slots -> 80 contiguous classes + COCO ids in dataset_meta."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from detres.cli.convert import converter_names, main

    assert {"torchvision", "detectron2"} <= set(converter_names())
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert main(["--from", "torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "out.pth")]) == 0
    ck = torch.load(tmp_path / "out.pth", weights_only=True)
    assert ck["format"] == "detres" and ck["dataset_meta"]["cat_ids"][:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    cls = ck["model"]["roi_heads.box_predictor.cls_score.weight"]
    assert cls.shape[0] == 81
    torch.testing.assert_close(cls[11], tv.roi_heads.box_predictor.cls_score.weight[13])  # label 11 = COCO id 13
    torch.testing.assert_close(cls[80], tv.roi_heads.box_predictor.cls_score.weight[0])  # background last
