"""RT-DETR exports: the whole network (ResNet-vd, HybridEncoder with the rep_vgg pass, query selection,
deformable decoder with the reference grid_sample path) as ONNX (onnxruntime) and as a ``torch.export``
program, dynamic in batch, height and width (the level sizes and encoder anchors stay symbolic);
the detector run on its exported graph gives ``model(images)``' detections. A tiny random-weight model
(ResNet-18-vd, width 64, 2 decoder layers, 12 queries) fed at its own sizes (no fixed-size resize)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detres.benchmark.hf_rtdetr import randomize_rtdetr_weights
from detres.config import load_config
from detres.export import (
    ExportedDetector,
    export_and_check,
    export_onnx,
    export_program,
    graph_diffs,
    onnx_runner,
    program_runner,
    random_images,
    record_graph_inputs,
)
from detres.modeling.build import build_model
from detres.runtime import optimize
from detres.utils.compare import compare_detections

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BASE = "configs/_base_/rtdetr.yaml"
TINY = [
    "model.head.matcher=null", "model.head.criterion=null", "model.head.denoising=null",
    "model.backbone.weights=null", "model.backbone.depth=18", "model.neck.expansion=0.5", "model.neck.hidden_dim=64",
    "model.neck.dim_feedforward=128", "model.neck.nhead=4", "model.head.transformer.nhead=4",
    "model.head.transformer.num_decoder_layers=2", "model.head.transformer.ffn_dim=128",
    "model.head.num_queries=12", "model.head.test_topk=20",
    "model.input.fixed_size_test=null", "+model.input.min_size_test=0",  # any size, so that dynamic sizes are tested
]
EXAMPLE = [(128, 160), (128, 160)]  # a batch of two, so that torch.export keeps the batch dim dynamic


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(BASE, TINY)).eval()
    randomize_rtdetr_weights(model, 0)  # non-degenerate BN statistics, boxes and scores
    return optimize(model, backend="export")


def _checks(model: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Graph inputs of other batch sizes and sizes than the example (padded to multiples of 32)."""
    return [record_graph_inputs(model, random_images(sizes, seed=i))["dense"]
            for i, sizes in enumerate([[(97, 131)], [(150, 110)] * 3], start=1)]


def _assert_graph_matches(model: torch.nn.Module, runner, inputs: list[tuple[torch.Tensor, ...]], atol: float) -> None:
    """Checked outputs within ``atol``; the anchors the runner selects score as eager's top-k."""
    spec = model.graphs()["dense"]
    diffs = graph_diffs(spec, runner, inputs)
    assert set(diffs) == set(spec.output_names)
    for k in spec.checked:
        assert diffs[k] < atol, (k, diffs[k])
    for args in inputs:
        with torch.no_grad():
            ref = spec.module(*args)
        got = runner(*args)
        scores, idx = ref[2].max(-1).values, got[4].long()  # enc_logits are the selected anchors'
        assert idx.shape == ref[4].shape
        assert torch.allclose(got[2].max(-1).values.sort(1)[0], scores.sort(1)[0], atol=atol)


@pytest.mark.slow  # ~2 min on the loaded 2-core machine (export + three onnxruntime sessions)
def test_onnx_graph_matches_eager_at_any_size(tmp_path: Path) -> None:
    model = _model()
    assert dict(model.runtime_passes).get("rep_vgg", 0) > 0
    spec = model.graphs()["dense"]
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    path = export_onnx(spec, example, tmp_path / "dense.onnx")
    assert "GridSample" in {n.op_type for n in onnx.load(path).graph.node}
    runner = onnx_runner(path, spec.input_names)
    _assert_graph_matches(model, runner, [example, *_checks(model)], atol=1e-4)
    images = random_images([(120, 150), (97, 173)], seed=5)
    with torch.no_grad():
        ref = model(images)
    assert [len(d["boxes"]) for d in ref] == [20, 20]
    cmp = compare_detections(ExportedDetector(model, {"dense": runner})(images), ref, label_offset=0,
                             atol=1e-3, score_atol=1e-5)
    assert cmp["identical"], cmp


def test_program_static_matches_eager_exactly() -> None:
    model = _model()
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    spec = model.graphs()["dense"]
    prog = program_runner(export_program(spec, example, dynamic=False))
    assert graph_diffs(spec, prog, [example]) == {k: 0.0 for k in spec.output_names}


@pytest.mark.slow
def test_program_dynamic_gives_model_detections(tmp_path: Path) -> None:
    """The dynamic program at other sizes, then the whole tool path (export_and_check)."""
    model = _model()
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    prog = program_runner(export_program(model.graphs()["dense"], example))
    _assert_graph_matches(model, prog, [example, *_checks(model)], atol=1e-5)
    images = random_images([(120, 150), (97, 173)], seed=5)
    with torch.no_grad():
        ref = model(images)
    cmp = compare_detections(ExportedDetector(model, {"dense": prog})(images), ref, label_offset=0,
                             atol=1e-5, score_atol=1e-6)
    assert cmp["identical"], cmp
    report, ok = export_and_check(model, tmp_path, image_size=(128, 160))
    assert ok, report
    assert set(report["graphs"]) == {"dense.onnx", "dense.program"}
