"""Deformable DETR exports: the reference grid_sample path as ONNX GridSample (onnxruntime) and as a
``torch.export`` program, dynamic in batch, height and width (any padded size: the model pads to the
batch's largest image); the detector run on its exported graph gives ``model(images)``' detections.
Tiny random-weight models (ResNet-18, 2 + 2 layers, width 64, 4 levels, 12 queries), plain and
refine + two-stage."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

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

BASE = "configs/_base_/deformable_detr.yaml"
TINY = [
    "model.head.matcher=null", "model.head.criterion=null",  # inference only: export needs no loss
    "model.backbone.depth=18", "model.neck.out_channels=64", "model.head.transformer.nhead=4",
    "model.head.transformer.num_encoder_layers=2", "model.head.transformer.num_decoder_layers=2",
    "model.head.transformer.ffn_dim=128", "model.head.num_queries=12", "model.head.test_topk=20",
    "model.input.min_size_test=0",
]
VARIANTS = {"plain": [], "refine_two_stage": ["model.head.with_box_refine=true", "model.head.two_stage=true"]}
EXAMPLE = [(128, 160), (128, 160)]  # a batch of two, so that torch.export keeps the batch dim dynamic


def _model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return optimize(build_model(load_config(BASE, TINY + VARIANTS[variant])).eval(), backend="export")


def _checks(model: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Graph inputs of other batch sizes and sizes than the example, not multiples of 32."""
    return [record_graph_inputs(model, random_images(sizes, seed=i))["dense"]
            for i, sizes in enumerate([[(97, 131)], [(150, 110)] * 3], start=1)]


def _assert_graph_matches(model: torch.nn.Module, runner, inputs: list[tuple[torch.Tensor, ...]], atol: float) -> None:
    """Checked outputs within ``atol``; two-stage: the proposals the runner selects score as eager's
    top-k (random weights may tie, so the indices themselves are compared only through their scores)."""
    spec = model.graphs()["dense"]
    diffs = graph_diffs(spec, runner, inputs)
    assert set(diffs) == set(spec.output_names)
    for k in spec.checked:
        assert diffs[k] < atol, (k, diffs[k])
    if "topk_indices" in spec.output_names:
        for args in inputs:
            with torch.no_grad():
                ref = spec.module(*args)
            got = runner(*args)
            enc_logits, idx = ref[2][..., 0], got[4].long()
            assert idx.shape == ref[4].shape
            picked = torch.gather(enc_logits, 1, idx).sort(1, descending=True)[0]
            assert torch.allclose(picked, torch.gather(enc_logits, 1, ref[4]), atol=atol)


@pytest.mark.parametrize("variant", [pytest.param("plain", marks=pytest.mark.slow), "refine_two_stage"])
def test_onnx_grid_sample_graph_matches_eager_at_any_size(variant: str, tmp_path: Path) -> None:
    model = _model(variant)
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    path = export_onnx(model.graphs()["dense"], example, tmp_path / "dense.onnx")
    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 16  # GridSample
    ops = {n.op_type for n in proto.graph.node}
    assert "GridSample" in ops  # the reference sampling path, one node per level
    runner = onnx_runner(path, model.graphs()["dense"].input_names)
    _assert_graph_matches(model, runner, [example, *_checks(model)], atol=1e-4)
    images = random_images([(120, 150), (97, 173)], seed=5)
    with torch.no_grad():
        ref = model(images)
    assert [len(d["boxes"]) for d in ref] == [20, 20]
    cmp = compare_detections(ExportedDetector(model, {"dense": runner})(images), ref, label_offset=0,
                             atol=1e-3, score_atol=1e-5)
    assert cmp["identical"], cmp


def test_program_static_matches_eager_exactly() -> None:
    """torch.export with fixed shapes: the same numbers as eager, bit for bit (the quick check; the
    dynamic program is the slow test below)."""
    model = _model("refine_two_stage")
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    prog = program_runner(export_program(model.graphs()["dense"], example, dynamic=False))
    spec = model.graphs()["dense"]
    diffs = graph_diffs(spec, prog, [example])
    assert diffs == {k: 0.0 for k in spec.output_names}, diffs


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "refine_two_stage"])
def test_program_dynamic_gives_model_detections(variant: str, tmp_path: Path) -> None:
    """The dynamic program (batch, height, width symbolic; ~1 min to export) at other sizes, then
    the whole tool path (export_and_check) on the exported files."""
    model = _model(variant)
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    prog = program_runner(export_program(model.graphs()["dense"], example))
    _assert_graph_matches(model, prog, [example, *_checks(model)], atol=1e-5)
    images = random_images([(120, 150), (97, 173)], seed=5)
    with torch.no_grad():
        ref = model(images)
    cmp = compare_detections(ExportedDetector(model, {"dense": prog})(images), ref, label_offset=0,
                             atol=1e-5, score_atol=1e-6)
    assert cmp["identical"], cmp
    if variant == "refine_two_stage":
        report, ok = export_and_check(model, tmp_path, image_size=(128, 160))
        assert ok, report
        assert set(report["graphs"]) == {"dense.onnx", "dense.program"}
        assert all(c["identical"] for c in report["detections"].values()), report["detections"]


def test_export_refuses_images_below_coarsest_stride() -> None:
    """The graph is exported for padded sizes above the coarsest stride (64 here): the tool says so."""
    model = _model("plain")
    assert model.graphs()["dense"].min_sizes == {"height": 65, "width": 65}
    with pytest.raises(ValueError, match="at least 65"):
        export_and_check(model, "unused", image_size=(64, 96))


def test_onnx_two_stage_serves_images_with_fewer_tokens_than_queries(tmp_path: Path) -> None:
    """The top-k count is min(num_queries, tokens) in the ONNX graph too (not the example's count
    frozen by the tracer): 150 queries, traced at 96x96 (193 tokens), run at 70x70 (119 tokens)."""
    torch.manual_seed(0)
    over = TINY + VARIANTS["refine_two_stage"] + ["model.head.num_queries=150"]
    model = optimize(build_model(load_config(BASE, over)).eval(), backend="export")
    spec = model.graphs()["dense"]
    example = record_graph_inputs(model, random_images([(96, 96), (96, 96)], seed=0))["dense"]
    runner = onnx_runner(export_onnx(spec, example, tmp_path / "dense.onnx"), spec.input_names)
    small = record_graph_inputs(model, random_images([(70, 70)], seed=1))["dense"]
    diffs = graph_diffs(spec, runner, [small])
    assert runner(*small)[-1].shape == (1, 119)
    assert all(diffs[k] < 1e-4 for k in spec.checked), diffs
