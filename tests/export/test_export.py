"""ONNX (onnxruntime) and torch.export programs of Faster R-CNN and DETR match eager outputs,
with dynamic batch and image size; the export tool writes files and reports parity."""
from __future__ import annotations

import json

import pytest
import torch

from detres.cli.export import main as export_main
from detres.config import load_config
from detres.export import export_onnx, export_program, parity_onnx, parity_program, raw_graph
from detres.modeling.build import build_model
from detres.modeling.fuse import optimize_for_inference

pytest.importorskip("onnxruntime")

FRCNN = ("configs/faster_rcnn/faster_rcnn_r18_fpn_1x_coco.yaml", ["model.neck.out_channels=64"])
DETR = ("configs/detr/detr_r50_150e_coco.yaml", [
    "model.backbone.depth=18", "model.head.enc_layers=1", "model.head.dec_layers=2", "model.head.num_queries=12",
    "model.head.hidden_dim=64", "model.head.ffn_dim=128", "model.neck.out_channels=64",
])


def _inputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, 128, 192, generator=g)
    # Other batch sizes and image sizes than the example: the graphs are dynamic. (Sizes keep p6,
    # stride 64, above one pixel: torch.export specializes size-1 dims.)
    return example, [example, torch.randn(2, 3, 192, 128, generator=g), torch.randn(3, 3, 128, 256, generator=g)]


@pytest.mark.parametrize("cfg", [FRCNN, DETR], ids=["faster_rcnn", "detr"])
def test_onnx_and_program_match_eager(cfg: tuple[str, list[str]], tmp_path) -> None:
    torch.manual_seed(0)
    model = optimize_for_inference(build_model(load_config(*cfg)))
    graph = raw_graph(model)
    example, checks = _inputs()
    path = export_onnx(graph, example, tmp_path / "m.onnx", opset=17)
    import onnx

    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    d_onnx = parity_onnx(graph, path, checks)
    d_prog = parity_program(graph, export_program(graph, example), checks)
    assert set(d_onnx) == set(d_prog) == set(graph.output_names)
    heads = [k for k in graph.output_names if k.startswith(("pred_", "logits_", "deltas_"))]
    assert heads
    for k in heads:
        assert d_onnx[k] < 1e-4, (k, d_onnx[k])
        assert d_prog[k] < 1e-5, (k, d_prog[k])
    with torch.no_grad():
        out = graph(checks[2])
    if graph.kind == "detr":
        assert out[0].shape == (3, 12, 81) and out[1].shape == (3, 12, 4)
    else:
        assert out[0].shape == (3, 64, 32, 64)  # p2 of a 128x256 batch


def test_export_tool_writes_files_and_parity(tmp_path, capsys) -> None:
    rc = export_main(["--config", FRCNN[0], *FRCNN[1], "--out", str(tmp_path), "--image-size", "128", "128"])
    assert rc == 0
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.pt2").is_file()
    report = json.loads((tmp_path / "parity.json").read_text())
    assert set(report) == {"onnx", "program"}
    assert report["onnx"]["logits_p2"] < 1e-4
    assert "parity OK" in capsys.readouterr().out
    prog = torch.export.load(str(tmp_path / "model.pt2"))
    assert len(prog.module()(torch.randn(2, 3, 192, 128))) == 15  # 5 levels + 5 logits + 5 deltas


def test_export_tool_rejects_bad_size(tmp_path) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        export_main(["--config", FRCNN[0], "--out", str(tmp_path), "--image-size", "70", "96"])
