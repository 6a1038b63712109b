"""The export tool's policy: write every graph of a detector, check each against eager PyTorch, then
run the whole detector on the exported graphs against ``model(images)``, detection for detection."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detres.utils.compare import compare_detections
from detres.export.exporter import (
    ExportedDetector,
    Runner,
    export_onnx,
    export_program,
    graph_diffs,
    onnx_runner,
    program_runner,
    record_graph_inputs,
)
from detres.modeling.detectors.base import Detector


def random_images(sizes: list[tuple[int, int]], seed: int) -> list[Tensor]:
    """Random RGB 0..255 float images [3, h, w], one per (h, w)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in sizes]


def export_and_check(
    model: Detector, out: str | Path, *, formats: tuple[str, ...] = ("onnx", "program"),
    image_size: tuple[int, int] = (320, 416), opset: int = 17, dynamic: bool = True,
    atol: float = 1e-3, unmatched_fraction: float = 0.01,
) -> tuple[dict[str, Any], bool]:
    """Export ``model.graphs()`` to ``out/<graph>.onnx`` / ``.pt2`` and check parity.

    The graphs are traced on the inputs they receive from two random ``image_size`` images (a batch of
    two, so that the batch dim stays dynamic); each graph is compared with eager on those and on one
    image of another size (dynamic) for its ``checked`` outputs (max abs diff <= ``atol``); then
    ``ExportedDetector`` on two images of different sizes must give ``model(images)``' detections with
    at most ``unmatched_fraction`` of them unmatched (near-tied detections may swap at the score
    threshold / NMS / top-k cutoff). Returns the report (also written to ``out/parity.json``) and
    whether everything passed.
    """
    h, w = image_size
    specs = model.graphs()
    # the graphs' own constraints: padded sizes are multiples of their dims' multiple_of (Faster R-CNN,
    # DETR: 32; Deformable DETR pads to the batch's largest image: 1) and at least their min_sizes
    mult = max([m for s in specs.values() for dims in s.dynamic_dims.values() for _, m in dims.values()] + [1])
    low = max([64] + [v for s in specs.values() for v in s.min_sizes.values()])
    if h % mult or w % mult or min(h, w) < low:
        raise ValueError(f"--image-size {h} {w}: use multiples of {mult}, at least {low} (the padded sizes the graphs see)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = record_graph_inputs(model, random_images([(h, w), (h, w)], seed=0))
    checks = [example] + ([record_graph_inputs(model, random_images([(h + 64, w + 32)], seed=1))] if dynamic else [])
    report: dict[str, Any] = {"graphs": {}, "detections": {}}
    runners: dict[str, dict[str, Runner]] = {fmt: {} for fmt in formats}
    ok = True
    for name, spec in specs.items():
        files, seconds = {}, {}
        if "onnx" in formats:
            start = time.perf_counter()
            files["onnx"] = export_onnx(spec, example[name], out / f"{name}.onnx", opset, dynamic)
            seconds["onnx"] = time.perf_counter() - start
            runners["onnx"][name] = onnx_runner(files["onnx"], spec.input_names)
        if "program" in formats:
            start = time.perf_counter()
            prog = export_program(spec, example[name], dynamic)
            files["program"] = str(out / f"{name}.pt2")
            torch.export.save(prog, files["program"])
            seconds["program"] = time.perf_counter() - start
            runners["program"][name] = program_runner(prog)
        for fmt, path in files.items():
            diffs = graph_diffs(spec, runners[fmt][name], [c[name] for c in checks])
            bad = {k: v for k, v in diffs.items() if k in (spec.checked or spec.output_names) and v > atol}
            ok &= not bad
            report["graphs"][f"{name}.{fmt}"] = {"file": path, "max_abs_diff": diffs, "over_atol": bad,
                                                 "export_s": round(seconds[fmt], 1)}
    if dynamic:
        images = random_images([(h, w), (h + 40, w - 24)], seed=2)
        with torch.no_grad():
            ref = model(images)
        for fmt, run in runners.items():
            cmp = compare_detections(ExportedDetector(model, run)(images), ref, label_offset=0, atol=10 * atol, score_atol=atol)
            ok &= cmp["unmatched"] <= unmatched_fraction * max(1, sum(cmp["detections"]))
            report["detections"][fmt] = cmp
    report["ok"] = ok
    (out / "parity.json").write_text(json.dumps(report, indent=1))
    return report, ok


def summary_lines(report: dict[str, Any], atol: float) -> list[str]:
    """Human-readable lines of an ``export_and_check`` report."""
    lines = []
    for key, r in report["graphs"].items():
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r["max_abs_diff"].items())
        lines.append(f"{key} ({r['file']}, exported in {r.get('export_s', float('nan')):.1f} s) vs eager: max abs diff {diffs}")
        lines += [f"  {key} {k}: {v:.2e} > {atol}" for k, v in r["over_atol"].items()]
    for fmt, cmp in report["detections"].items():
        lines.append(f"{fmt} end to end vs model(images): {cmp['detections']} detections, identical {cmp['identical']} "
                     f"(max box diff {cmp['max_box_diff']:.2e} px, max score diff {cmp['max_score_diff']:.2e})")
    lines.append(f"parity {'OK' if report['ok'] else 'FAILED'}: checked outputs within atol {atol}")
    return lines
