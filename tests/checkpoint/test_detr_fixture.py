"""Official DETR equivalence (../shared/fixtures/detr, see its README): an official-format checkpoint
loads into the detres DETR built from configs/detr/detr_r50_150e_coco.yaml and reproduces the
reference's raw outputs, auxiliary outputs, postprocessed detections and set-criterion losses.

Tolerances: the figures measured on this fixture (docs/model_zoo.md) with a margin of about 2x:
logits 5e-5 (measured 2.5e-5, aux 2.3e-5), boxes 1e-6 normalized (3.6e-7), losses 3e-6 relative (1.2e-6)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import detres
from detres.checkpoint.detr import COCO_CATEGORY_IDS, label_to_coco_id
from detres.structures import ImageBatch
from detres.structures.boxes import cxcywh_to_xyxy, denormalize_boxes

CONFIG = "configs/detr/detr_r50_150e_coco.yaml"
LOGITS, BOXES, LOSSES = 5e-5, 1e-6, 3e-6
PIXEL_SCORES, PIXEL_BOXES = 5e-5, 480 * 1e-6  # 0..255 image in: one more round trip through uint8-range floats
# The fixture's architecture: 91 raw-COCO-id classes, 2 encoder / 3 decoder layers, FFN 512.
OVERRIDES = ["num_classes=91", "model.head.transformer.num_encoder_layers=2",
             "model.head.transformer.num_decoder_layers=3", "model.head.transformer.ffn_dim=512",
             "model.input.pad_policy_test=batch_max", "model.input.size_divisibility=1"]


def _build(repo_root: Path, shared_dir: Path, extra: list[str] | None = None) -> tuple[torch.nn.Module, Any]:
    ckpt = shared_dir / "fixtures" / "detr" / "detr_r50_official_format_fp16.pth"
    if not ckpt.is_file():
        pytest.skip(f"DETR fixture checkpoint not found: {ckpt}")
    cfg = detres.load_config(repo_root / CONFIG, overrides=OVERRIDES + (extra or []))
    model = detres.build_model(cfg)
    report = detres.load_checkpoint(model, ckpt)
    return model.eval(), report


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "fixtures" / "detr" / "detr_fixture_A.pt"
    if not path.is_file():
        pytest.skip(f"DETR fixture outputs not found: {path}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def loaded(repo_root: Path, shared_dir: Path, ref: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    model, report = _build(repo_root, shared_dir)
    batch = ImageBatch.from_tensors(list(ref["images"]), 1)
    with torch.no_grad():
        raw = model.forward_raw(batch)
    return {"model": model, "report": report, "batch": batch, "raw": raw}


def test_checkpoint_loads_every_key(loaded: dict[str, Any]) -> None:
    report = loaded["report"]
    assert report.source_format == "detr"
    assert report.missing == [] and report.unexpected == []


def test_raw_outputs_match_reference(loaded: dict[str, Any], ref: dict[str, Any]) -> None:
    raw = loaded["raw"]
    assert raw["pred_logits"].shape == (1, 100, 92)
    torch.testing.assert_close(raw["pred_logits"], ref["pred_logits"], atol=LOGITS, rtol=0)
    torch.testing.assert_close(raw["pred_boxes"], ref["pred_boxes"], atol=BOXES, rtol=0)
    assert len(raw["aux_outputs"]) == len(ref["aux_outputs"]) == 2
    for ours, theirs in zip(raw["aux_outputs"], ref["aux_outputs"]):
        torch.testing.assert_close(ours["pred_logits"], theirs["pred_logits"], atol=LOGITS, rtol=0)
        torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], atol=BOXES, rtol=0)


def test_postprocess_matches_reference(loaded: dict[str, Any], ref: dict[str, Any]) -> None:
    sizes = [tuple(int(v) for v in s) for s in ref["orig_sizes"]]
    (ours,) = loaded["model"].postprocess(loaded["raw"], loaded["batch"], sizes)
    (theirs,) = ref["postprocessed"]
    assert torch.equal(ours["labels"], theirs["labels"])
    torch.testing.assert_close(ours["scores"], theirs["scores"], atol=LOGITS, rtol=0)
    # Boxes are in pixels of a 427x640 image: the normalized tolerance times the image size.
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=640 * BOXES, rtol=0)


def test_criterion_losses_match_reference(loaded: dict[str, Any], ref: dict[str, Any]) -> None:
    model = loaded["model"]
    with torch.no_grad():
        losses = model.head.criterion(loaded["raw"], ref["targets"])
    assert set(losses) == set(ref["losses"])
    for name, value in ref["losses"].items():
        assert losses[name].item() == pytest.approx(float(value), rel=LOSSES), name


def test_detector_losses_from_pixel_targets(loaded: dict[str, Any], ref: dict[str, Any]) -> None:
    # DETR.losses takes absolute xyxy pixel boxes and normalizes them by the unpadded image size.
    model, batch = loaded["model"], loaded["batch"]
    targets = [{"labels": t["labels"], "boxes": denormalize_boxes(cxcywh_to_xyxy(t["boxes"]), batch.image_sizes[i])}
               for i, t in enumerate(ref["targets"])]
    with torch.no_grad():
        losses = model.losses(batch, targets)
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for name, value in ref["losses"].items():
        base = name.rstrip("0123456789").rstrip("_")
        if base in weights:
            assert losses[name].item() == pytest.approx(weights[base] * float(value), rel=LOSSES), name
    assert losses["class_error"].item() == pytest.approx(ref["losses"]["class_error"])


def test_forward_on_pixel_image_matches_reference(loaded: dict[str, Any], ref: dict[str, Any]) -> None:
    # The public path: a 0..255 RGB image in, detections in that image's pixels out (no test resize).
    model = loaded["model"]
    image = ref["images"][0] * model.pixel_std + model.pixel_mean
    model.input.min_size_test = 0
    try:
        with torch.no_grad():
            (det,) = model([image])
    finally:
        model.input.min_size_test = 800
    h, w = image.shape[-2:]
    (theirs,) = ref["postprocessed"]
    oh, ow = (int(v) for v in ref["orig_sizes"][0])
    expected = theirs["boxes"] * torch.tensor([w / ow, h / oh, w / ow, h / oh])
    assert torch.equal(det["labels"], theirs["labels"])
    torch.testing.assert_close(det["scores"], theirs["scores"], atol=PIXEL_SCORES, rtol=0)
    torch.testing.assert_close(det["boxes"], expected, atol=PIXEL_BOXES, rtol=0)


def test_remap_to_80_contiguous_classes(repo_root: Path, shared_dir: Path, loaded: dict[str, Any]) -> None:
    # num_classes: 80 takes the official rows of the 80 COCO ids (in contiguous order) + no-object.
    model80, report = _build(repo_root, shared_dir, ["num_classes=80"])
    assert report.missing == [] and report.unexpected == []
    assert model80.head.class_embed.weight.shape == (81, 256)
    rows = torch.tensor([*COCO_CATEGORY_IDS, 91])
    torch.testing.assert_close(model80.head.class_embed.weight, loaded["model"].head.class_embed.weight[rows])
    torch.testing.assert_close(model80.head.class_embed.bias, loaded["model"].head.class_embed.bias[rows])
    assert label_to_coco_id(80)[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert label_to_coco_id(91) == list(range(91))
    assert len(set(COCO_CATEGORY_IDS)) == 80 and max(COCO_CATEGORY_IDS) == 90
