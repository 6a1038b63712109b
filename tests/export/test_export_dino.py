"""DINO exports: ONNX (the reference grid_sample path as GridSample, onnxruntime) and ``torch.export``,
dynamic in batch, height and width; the detector run on its exported graph gives ``model(images)``'
detections. Tiny random-weight model: ResNet-18, 1 + 2 layers, width 64, 4 levels, 12 queries,
inference only (no denoising, matcher or criterion: denoising is training-time only)."""
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

BASE = "configs/_base_/dino.yaml"
TINY = [
    "model.head.matcher=null", "model.head.criterion=null", "model.head.denoising=null",
    "model.backbone.weights=null", "model.backbone.depth=18", "model.neck.out_channels=64",
    "model.head.transformer.nhead=4", "model.head.transformer.num_encoder_layers=1",
    "model.head.transformer.num_decoder_layers=2", "model.head.transformer.ffn_dim=128",
    "model.head.num_queries=12", "model.head.test_topk=20", "model.input.min_size_test=0",
]
EXAMPLE = [(128, 160), (128, 160)]  # a batch of two, so that torch.export keeps the batch dim dynamic


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return optimize(build_model(load_config(BASE, TINY)).eval(), backend="export")


def _checks(model: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Graph inputs of other batch sizes and sizes than the example, not multiples of 32."""
    return [record_graph_inputs(model, random_images(sizes, seed=i))["dense"]
            for i, sizes in enumerate([[(97, 131)], [(150, 110)] * 3], start=1)]


def _assert_graph_matches(model: torch.nn.Module, runner, inputs: list[tuple[torch.Tensor, ...]], atol: float) -> None:
    """Checked outputs (the selected proposals' logits, boxes and grid boxes included) within ``atol``;
    the selection is ``num_queries`` tokens, best class logit first."""
    spec = model.graphs()["dense"]
    diffs = graph_diffs(spec, runner, inputs)
    assert set(diffs) == set(spec.output_names)
    for k in spec.checked:
        assert diffs[k] < atol, (k, diffs[k])
    i_idx, enc = spec.output_names.index("topk_indices"), spec.output_names.index("enc_logits")
    for args in inputs:
        with torch.no_grad():
            ref = spec.module(*args)
        got = runner(*args)
        assert got[i_idx].shape == ref[i_idx].shape == (args[0].shape[0], 12)
        scores = got[enc].max(-1)[0]  # the selected proposals' best class logits: a sorted top-k
        assert (scores[:, :-1] >= scores[:, 1:] - atol).all()


def _assert_detections(model: torch.nn.Module, runner, atol: float, score_atol: float) -> None:
    images = random_images([(120, 150), (97, 173)], seed=5)
    with torch.no_grad():
        ref = model(images)
    assert [len(d["boxes"]) for d in ref] == [20, 20]
    cmp = compare_detections(ExportedDetector(model, {"dense": runner})(images), ref, label_offset=0,
                             atol=atol, score_atol=score_atol)
    assert cmp["identical"], cmp


def test_onnx_graph_matches_eager_at_any_size(tmp_path: Path) -> None:
    model = _model()
    spec = model.graphs()["dense"]
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    path = export_onnx(spec, example, tmp_path / "dense.onnx")
    assert "GridSample" in {n.op_type for n in onnx.load(path).graph.node}
    runner = onnx_runner(path, spec.input_names)
    _assert_graph_matches(model, runner, [example, *_checks(model)], atol=1e-4)
    _assert_detections(model, runner, atol=1e-3, score_atol=1e-5)


def test_program_static_matches_eager_exactly() -> None:
    """torch.export with fixed shapes: the same numbers as eager, bit for bit."""
    model = _model()
    spec = model.graphs()["dense"]
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    prog = program_runner(export_program(spec, example, dynamic=False))
    assert graph_diffs(spec, prog, [example]) == {k: 0.0 for k in spec.output_names}


@pytest.mark.slow
def test_program_dynamic_gives_model_detections(tmp_path: Path) -> None:
    """The dynamic program (batch, height, width symbolic) at other sizes, then the whole tool path
    (export_and_check: ONNX + program files, detections compared)."""
    model = _model()
    spec = model.graphs()["dense"]
    example = record_graph_inputs(model, random_images(EXAMPLE, seed=0))["dense"]
    prog = program_runner(export_program(spec, example))
    _assert_graph_matches(model, prog, [example, *_checks(model)], atol=1e-5)
    _assert_detections(model, prog, atol=1e-5, score_atol=1e-6)
    report, ok = export_and_check(model, tmp_path, image_size=(128, 160))
    assert ok, report
    assert set(report["graphs"]) == {"dense.onnx", "dense.program"}
    assert all(c["identical"] for c in report["detections"].values()), report["detections"]


def test_export_refuses_images_below_coarsest_stride() -> None:
    """Padded sizes must exceed the coarsest stride (64: res5 + one extra level); the tool says so."""
    model = _model()
    assert model.graphs()["dense"].min_sizes == {"height": 65, "width": 65}
    with pytest.raises(ValueError, match="at least 65"):
        export_and_check(model, "unused", image_size=(64, 96))


def test_graph_diffs_compares_rows_on_the_runners_selection() -> None:
    """A runner whose top-k orders two tied proposals the other way (as onnxruntime may with random
    weights) selects other rows: ``graph_diffs`` counts the swapped slots and compares the rest on
    that selection (eager rerun with it), so an exact graph still shows 0."""
    model = _model()
    spec = model.graphs()["dense"]
    assert spec.selection == "topk_indices"
    args = record_graph_inputs(model, random_images([(128, 160), (128, 160)], seed=0))["dense"]
    i_idx = spec.output_names.index("topk_indices")
    with torch.no_grad():
        eager = spec.module(*args)
    swapped = eager[i_idx].clone()
    swapped[0, [3, 4]] = swapped[0, [4, 3]]

    def runner(*a: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(spec.module(*a, swapped))

    got = runner(*args)
    # slot by slot the swapped rows differ (DINO's content queries are learned per slot)
    assert (got[0] - eager[0]).abs().max() > 1e-3
    diffs = graph_diffs(spec, runner, [args])
    assert diffs["topk_indices"] == 2
    assert all(diffs[k] == 0 for k in spec.checked), diffs
