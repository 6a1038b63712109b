"""detectron2's Faster R-CNN R50-FPN reference (``../shared/fixtures/detectron2``, see its README):
the model-zoo ``.pkl`` (and its ``.pth`` twin, rebuilt here) loaded into the 1x config reproduce
detectron2's FPN statistics, RPN logits, proposals, box-head outputs and detections.

Tolerances are the figures measured on this fixture (docs/model_zoo.md) with a margin of about 1.5x:
FPN stats 1e-5 relative (measured 4.6e-7), RPN logits 5e-5 (2.7e-5), proposals 2.5e-3 px (1.4e-3),
proposal logits 3e-5 (1.7e-5), box-head class logits 5e-4 (2.7e-4), box deltas 5e-5 (2.8e-5),
detections 2.5e-3 px (1.5e-3) and scores 2e-5 (1.3e-5), classes and counts exact. Proposals are
compared as a set (near-tied logits reorder them), box logits/deltas after the same matching,
detections in order.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detres
from detres.checkpoint.io import read_weights_file
from tests.modeling.frcnn_utils import build_from_config


def _fixture(shared_dir: Path) -> Path:
    d = shared_dir / "fixtures" / "detectron2"
    if not (d / "fixture_A.pt").is_file():
        pytest.skip(f"detectron2 fixture not found in {d}")
    return d


def _check(model: torch.nn.Module, fx: dict) -> None:
    model.eval()
    with torch.no_grad():
        batch = model.preprocess([fx["image"]], resize=True)
        raw = model.forward_raw(batch)
        det = model.postprocess(raw, batch, [tuple(fx["image_size"])])[0]
    assert list(batch.tensor.shape[-2:]) == fx["padded_size"]
    for i, lv in enumerate(fx["fpn_levels_order"]):
        f = raw["features"][f"p{lv}"].double()
        assert list(f.shape) == fx["fpn_shapes"][i]
        torch.testing.assert_close(f.mean(), fx["fpn_mean"][i], rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(f.std(unbiased=False), fx["fpn_std"][i], rtol=1e-5, atol=0)
    for ours, ref in zip(raw["rpn"]["logits"], fx["rpn_objectness_logits_per_level"]):
        torch.testing.assert_close(ours, ref, atol=5e-5, rtol=0)
    props, ref_props = raw["proposals"][0], fx["proposal_boxes"]
    assert props.shape == ref_props.shape
    dist = (ref_props[:, None] - props[None]).abs().amax(-1)
    best, idx = dist.min(1)
    assert best.max() <= 2.5e-3 and idx.unique().numel() == len(ref_props)
    torch.testing.assert_close(raw["proposal_logits"][0][idx], fx["proposal_objectness_logits"], atol=3e-5, rtol=0)
    torch.testing.assert_close(raw["class_logits"][idx], fx["box_cls_logits"], atol=5e-4, rtol=0)
    torch.testing.assert_close(raw["box_deltas"][idx], fx["box_deltas"], atol=5e-5, rtol=0)
    assert len(det["boxes"]) == fx["raw_num_detections"] == len(fx["pred_boxes"])
    torch.testing.assert_close(det["boxes"], fx["pred_boxes"], atol=2.5e-3, rtol=0)
    torch.testing.assert_close(det["scores"], fx["scores"], atol=2e-5, rtol=0)
    assert torch.equal(det["labels"], fx["pred_classes"])


@pytest.fixture(scope="module")
def d2_model_and_fixture(shared_dir: Path) -> tuple[torch.nn.Module, dict, Path]:
    d = _fixture(shared_dir)
    model = build_from_config("faster_rcnn_r50_fpn_1x_coco", ["model.input.min_size_test=0"])
    fx = torch.load(d / "fixture_A.pt", weights_only=True)
    return model, fx, d


@pytest.mark.slow
def test_pkl_reproduces_detectron2(d2_model_and_fixture: tuple) -> None:
    model, fx, d = d2_model_and_fixture
    report = detres.load_checkpoint(model, d / "d2_faster_rcnn_R_50_FPN_fp16.pkl")
    assert report.source_format == "detectron2" and not report.missing and not report.unexpected
    _check(model, fx)


@pytest.mark.slow
def test_pth_twin_reproduces_detectron2(d2_model_and_fixture: tuple, tmp_path: Path) -> None:
    model, fx, d = d2_model_and_fixture
    pkl = read_weights_file(d / "d2_faster_rcnn_R_50_FPN_fp16.pkl")
    twin = {"model": {k: torch.from_numpy(v) for k, v in pkl["model"].items() if "cell_anchors" not in k}}
    torch.save(twin, tmp_path / "model_final.pth")
    for p in model.parameters():  # make sure the values come from the file
        torch.nn.init.zeros_(p)
    report = detres.load_checkpoint(model, tmp_path / "model_final.pth")
    assert report.source_format == "detectron2" and not report.missing and not report.unexpected
    _check(model, fx)


def test_cell_anchors_equal_detectron2s(shared_dir: Path) -> None:
    """The stored anchor buffers (detectron2's own) equal ours, though the loader ignores them."""
    d = _fixture(shared_dir)
    pkl = read_weights_file(d / "d2_faster_rcnn_R_50_FPN_fp16.pkl")["model"]
    model = build_from_config("faster_rcnn_r18_fpn_1x_coco", ["model.backbone.depth=18"])
    for i in range(5):
        ref = torch.from_numpy(pkl[f"proposal_generator.anchor_generator.cell_anchors.{i}"])
        torch.testing.assert_close(getattr(model.rpn.anchor_generator, f"cell_anchors_{i}"), ref, atol=1e-5, rtol=0)
