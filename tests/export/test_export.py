"""ONNX (onnxruntime) and torch.export programs of every detector graph match eager, with dynamic
batch and image size; the detector run on its exported graphs gives model(images)' detections; the
export tool writes the files and reports parity. Export holds no detector logic of its own."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from detres.utils.compare import compare_detections
from detres.cli.export import main as export_main
from detres.config import load_config
from detres.export import (
    ExportedDetector,
    export_onnx,
    export_program,
    graph_diffs,
    load_runners,
    onnx_runner,
    program_runner,
    random_images,
    record_graph_inputs,
)
from detres.modeling.build import build_model
from detres.runtime import optimize

pytest.importorskip("onnxruntime")

FRCNN = ("configs/faster_rcnn/faster_rcnn_r18_fpn_1x_coco.yaml", ["model.neck.out_channels=64", "model.input.min_size_test=0"])
DETR = ("configs/detr/detr_r50_150e_coco.yaml", [
    "model.backbone.depth=18", "model.head.transformer.num_encoder_layers=1",
    "model.head.transformer.num_decoder_layers=2", "model.head.num_queries=12",
    "model.head.transformer.ffn_dim=128", "model.neck.out_channels=64", "model.input.min_size_test=0",
])


def _model(cfg: tuple[str, list[str]]) -> torch.nn.Module:
    """A random-weight model with the export passes applied, as the export tool does."""
    torch.manual_seed(0)
    model = build_model(load_config(*cfg)).eval()
    if hasattr(model, "roi_heads"):  # a confident class head, so that random weights give detections
        g = torch.Generator().manual_seed(1)
        cls = model.roi_heads.box_predictor.cls_score
        with torch.no_grad():
            cls.weight.copy_(torch.randn(cls.weight.shape, generator=g) * 0.01)
        # No top-100 cutoff: random scores near 1 tie at the cutoff, where float-level differences swap them.
        model.roi_heads.detections_per_image = 10_000
    return optimize(model, backend="export")


@pytest.mark.parametrize("cfg", [FRCNN, DETR], ids=["faster_rcnn", "detr"])
def test_graphs_export_and_match_eager(cfg: tuple[str, list[str]], tmp_path: Path) -> None:
    model = _model(cfg)
    example = record_graph_inputs(model, random_images([(128, 192), (128, 192)], seed=0))
    # Other batch sizes and image sizes than the example: the graphs are dynamic.
    checks = [example, record_graph_inputs(model, random_images([(192, 128)], seed=1)),
              record_graph_inputs(model, random_images([(128, 256)] * 3, seed=2))]
    assert set(example) == set(model.graphs())
    for name, spec in model.graphs().items():
        path = export_onnx(spec, example[name], tmp_path / f"{name}.onnx", opset=17)
        import onnx

        proto = onnx.load(path)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        inputs = [c[name] for c in checks]
        d_onnx = graph_diffs(spec, onnx_runner(path, spec.input_names), inputs)
        d_prog = graph_diffs(spec, program_runner(export_program(spec, example[name])), inputs)
        assert set(d_onnx) == set(d_prog) == set(spec.output_names)
        for k in spec.checked or spec.output_names:
            assert d_onnx[k] < 5e-4, (name, k, d_onnx[k])  # ONNX Runtime rounds differently (~1e-6 relative)
            assert d_prog[k] < 1e-5, (name, k, d_prog[k])


def test_faster_rcnn_static_box_pooling_equals_eager() -> None:
    """The exported box graph pools every RoI from every level and keeps its own by a one-hot sum: the
    same numbers as the eager per-level gather, on RoIs that span several levels."""
    model = _model(FRCNN)
    rec = record_graph_inputs(model, random_images([(256, 320), (256, 320)], seed=3))["box"]
    *feats, rois = rec
    pooler = model.roi_heads.box_pooler
    assert len(pooler.levels(rois).unique()) >= 2
    with torch.no_grad():
        static = model.roi_heads.forward_rois(feats, rois, static=True)
        eager = model.roi_heads.forward_rois(feats, rois, static=False)
    for s, e in zip(static, eager):
        assert torch.equal(s, e)


@pytest.mark.parametrize("cfg", [FRCNN, DETR], ids=["faster_rcnn", "detr"])
def test_detector_on_exported_graphs_gives_model_detections(cfg: tuple[str, list[str]], tmp_path: Path) -> None:
    model = _model(cfg)
    example = record_graph_inputs(model, random_images([(128, 192), (128, 192)], seed=0))
    onnx, prog = {}, {}
    for name, spec in model.graphs().items():
        onnx[name] = onnx_runner(export_onnx(spec, example[name], tmp_path / f"{name}.onnx"), spec.input_names)
        prog[name] = program_runner(export_program(spec, example[name]))
    images = random_images([(150, 200), (120, 260), (150, 200)], seed=4)
    with torch.no_grad():
        ref = model(images)
    assert min(len(d["boxes"]) for d in ref) >= 12
    exact = compare_detections(ExportedDetector(model, prog)(images), ref, label_offset=0, atol=1e-4, score_atol=1e-5)
    assert exact["identical"], exact
    # ONNX Runtime's kernels round differently (features ~1e-4 apart); a random box head amplifies
    # that, so near-tied detections can swap at the score threshold / NMS: allow 5% of them.
    cmp = compare_detections(ExportedDetector(model, onnx)(images), ref, label_offset=0, atol=1e-2, score_atol=1e-4)
    assert cmp["unmatched"] <= 0.05 * sum(len(d["boxes"]) for d in ref), cmp
    with pytest.raises(KeyError, match="missing"):
        ExportedDetector(model, {})


def test_export_tool_writes_files_and_parity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = export_main(["--config", FRCNN[0], *FRCNN[1], "--out", str(tmp_path), "--image-size", "128", "128"])
    assert rc == 0
    for name in ("dense.onnx", "dense.pt2", "box.onnx", "box.pt2"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "parity.json").read_text())
    assert set(report["graphs"]) == {"dense.onnx", "dense.program", "box.onnx", "box.program"}
    assert report["ok"] and set(report["detections"]) == {"onnx", "program"}
    assert report["graphs"]["dense.onnx"]["max_abs_diff"]["logits_p2"] < 1e-4
    assert "parity OK" in capsys.readouterr().out
    model = build_model(load_config(FRCNN[0], FRCNN[1])).eval()
    runners = load_runners(model, tmp_path, "program")
    assert len(runners["dense"](torch.randn(2, 3, 192, 128))) == 15  # 5 levels + 5 logits + 5 deltas


def test_export_tool_rejects_bad_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        export_main(["--config", FRCNN[0], "--out", str(tmp_path), "--image-size", "70", "96"])


def test_export_package_has_no_detector_logic() -> None:
    """Export traces the detectors' own graphs: no anchors, RoI pooling, NMS or matching of its own."""
    root = Path(__file__).resolve().parents[2] / "detres" / "export"
    banned = {"nms", "batched_nms", "roi_align", "box_iou", "linear_sum_assignment", "AnchorGenerator"}
    for path in root.glob("*.py"):
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert not names & banned, (path.name, names & banned)
