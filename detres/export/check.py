"""Export a built detector and check the graphs against eager PyTorch: the parity policy.

``export_with_parity`` writes ONNX (opset >= 17) and ``torch.export`` programs of a model, runs them
on the same random inputs as eager PyTorch (two batch sizes and image sizes unless ``static``) and
decides pass / fail. DETR: one graph (``model.onnx`` / ``model.pt2``). Faster R-CNN: the dense graph
(``model.*``: pyramid and RPN outputs) and the box stage (``box_stage.*``: pooled features + RoIs ->
scores, decoded boxes), each checked on its own, then both together (``ExportedFasterRCNN``: the
model's eager proposal selection and NMS between and after them) against ``model(images)`` detection
for detection.

Tolerances: ``atol`` on DETR outputs, RPN logits/deltas and box-stage scores; ``box_atol`` (pixels) on
box-stage boxes and end-to-end boxes. Feature maps are unnormalized (large magnitudes) and not judged.
End to end, near-tied detections may swap at the threshold / NMS / top-k cutoff: up to 1% of the
detections may be unmatched.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detres.export.exporter import (
    BoxGraph,
    ExportedFasterRCNN,
    RawGraph,
    box_stage_inputs,
    export_box_onnx,
    export_box_program,
    export_onnx,
    export_program,
    onnx_runner,
    parity_box,
    parity_onnx,
    parity_program,
    program_runner,
    raw_graph,
    use_export_kernels,
)
from detres.utils.compare import compare_detections

__all__ = ["ExportReport", "export_with_parity", "judge_parity"]

FORMATS = ("onnx", "program")


@dataclass
class ExportReport:
    """What ``export_with_parity`` wrote and measured.

    parity: per format (``onnx``, ``program``, ``<fmt>_box_stage``) the max abs diff of each output.
    detections: per format, ``compare_detections`` of the exported pipeline vs ``model(images)``.
    failures: one line per check over its tolerance; ``ok`` is True when there is none.
    """

    files: list[Path] = field(default_factory=list)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    detections: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    num_checks: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def judge_parity(parity: dict[str, dict[str, float]], detections: dict[str, dict[str, Any]],
                 atol: float = 1e-3, box_atol: float = 1e-2) -> list[str]:
    """The checks over tolerance, one line each (empty: parity holds); see the module docstring."""
    failures = []
    for fmt, d in detections.items():
        if d["unmatched"] > 0.01 * max(1, sum(d["detections"])):
            failures.append(f"{fmt} end to end: {d['unmatched']} of {sum(d['detections'])} detections unmatched")
    for fmt, diffs in parity.items():
        for k, v in diffs.items():
            tol = box_atol if k == "boxes" else atol
            if (k.startswith(("pred_", "logits_", "deltas_")) or k in ("scores", "boxes")) and v > tol:
                failures.append(f"{fmt} {k}: {v:.2e} > {tol}")
    return failures


def export_with_parity(
    model: nn.Module, out: str | Path, *, formats: Sequence[str] = FORMATS, image_size: tuple[int, int] = (320, 416),
    opset: int = 17, static: bool = False, fuse: bool = True, atol: float = 1e-3, box_atol: float = 1e-2,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export an eval-mode ``model`` into ``out`` (``model.onnx``, ``model.pt2``, Faster R-CNN's
    ``box_stage.*``, ``parity.json``) and check it against eager; ``log`` receives progress lines.

    ``fuse`` folds frozen BN into convs first (the inference model); ``image_size`` (H, W, multiples
    of 32) is the example input's size; ``static`` fixes batch and size instead of dynamic axes.
    """
    from detres.modeling.fuse import optimize_for_inference

    h, w = image_size
    if h % 32 or w % 32:
        raise ValueError(f"image size {h} {w}: use multiples of 32 (the padded sizes the model sees)")
    if fuse:
        optimize_for_inference(model)
    use_export_kernels(model)  # eager pools with the graphs' RoIAlign, so parity is like for like
    graph = raw_graph(model)
    g = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, h, w, generator=g)
    checks = [example] if static else [example, torch.randn(2, 3, h + 64, w + 32, generator=g)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(num_checks=len(checks))
    if "onnx" in formats:
        path = export_onnx(graph, example, out / "model.onnx", opset, dynamic=not static)
        report.parity["onnx"] = parity_onnx(graph, path, checks)
        report.files.append(Path(path))
        log(f"wrote {path}")
    if "program" in formats:
        prog = export_program(graph, example, dynamic=not static)
        torch.export.save(prog, str(out / "model.pt2"))
        report.parity["program"] = parity_program(graph, prog, checks)
        report.files.append(out / "model.pt2")
        log(f"wrote {out / 'model.pt2'}")
    if graph.kind == "frcnn":
        _faster_rcnn_box_stage(model, graph, checks, out, report, formats=formats, image_size=(h, w), opset=opset,
                               static=static, atol=atol, box_atol=box_atol, log=log)
    parity_json = {**report.parity, **{f"detections_{k}": v for k, v in report.detections.items()}}
    (out / "parity.json").write_text(json.dumps(parity_json, indent=1))
    report.failures = judge_parity(report.parity, report.detections, atol, box_atol)
    return report


def _faster_rcnn_box_stage(
    model: nn.Module, graph: RawGraph, checks: list[Tensor], out: Path, report: ExportReport, *,
    formats: Sequence[str], image_size: tuple[int, int], opset: int, static: bool, atol: float, box_atol: float,
    log: Callable[[str], None],
) -> None:
    """Export Faster R-CNN's box stage, add its parity to ``report``, and check both exported graphs
    end to end (with the model's eager glue, ``ExportedFasterRCNN``) against ``model(images)`` on two
    random images: per format, ``compare_detections``' result into ``report.detections``."""
    box = BoxGraph(model).eval()
    box_checks = [box_stage_inputs(graph, x, num_rois=64 * len(x), seed=i) for i, x in enumerate(checks)]
    box_example = box_checks[0] if static else box_stage_inputs(graph, checks[-1], num_rois=16, seed=9)
    runners = {}  # end to end needs graphs that take any image size
    onnx_path = prog = None
    if "onnx" in formats:
        onnx_path = export_box_onnx(box, box_example, out / "box_stage.onnx", opset, dynamic=not static)
        runners["onnx"] = ExportedFasterRCNN(
            model, onnx_runner(out / "model.onnx", ["images"]), onnx_runner(onnx_path, box.input_names)
        )
        report.files.append(Path(onnx_path))
        log(f"wrote {onnx_path}")
    if "program" in formats:
        prog = export_box_program(box, box_example, dynamic=not static)
        torch.export.save(prog, str(out / "box_stage.pt2"))
        runners["program"] = ExportedFasterRCNN(
            model, program_runner(torch.export.load(str(out / "model.pt2"))), program_runner(prog)
        )
        report.files.append(out / "box_stage.pt2")
        log(f"wrote {out / 'box_stage.pt2'}")
    for fmt, diffs in parity_box(box, box_checks, onnx_path, prog).items():
        report.parity[f"{fmt}_box_stage"] = diffs
    h, w = image_size
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=g).float(),
              torch.randint(0, 256, (3, h + 40, w - 24), generator=g).float()]
    with torch.no_grad():
        ref = model(images)
    for fmt, run in ({} if static else runners).items():
        cmp = compare_detections(run(images), ref, label_offset=0, atol=box_atol, score_atol=atol)
        report.detections[fmt] = cmp
        log(f"{fmt} end to end vs model(images): {cmp['detections']} detections, identical {cmp['identical']} "
            f"(max box diff {cmp['max_box_diff']:.2e} px, max score diff {cmp['max_score_diff']:.2e})")
