"""``detres export --config C [--weights W] --out DIR [--format onnx program] [key=value ...]``: write a
detector's graphs as ONNX (opset >= 17) and ``torch.export`` programs, then check them against eager
PyTorch on the same random inputs (two batch sizes and image sizes) and print the max abs diffs.

DETR: one graph (``model.onnx`` / ``model.pt2``). Faster R-CNN: the dense graph (``model.*``: pyramid
and RPN outputs) and the box stage (``box_stage.*``: pooled features + RoIs -> scores, decoded boxes),
each checked on its own, then both together (``ExportedFasterRCNN``: the model's eager proposal
selection and NMS between and after them) against ``model(images)`` detection for detection."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from detres.cli.common import add_config_args, load_config_from_args


def main(argv: list[str] | None = None) -> int:
    """Export, then run the parity check; exit 1 when a difference passes ``--atol``."""
    parser = argparse.ArgumentParser(prog="detres export", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--weights", default=None, help="checkpoint to load (any supported layout)")
    parser.add_argument("--out", required=True, help="output folder (model.onnx, model.pt2, parity.json)")
    parser.add_argument("--format", nargs="+", choices=["onnx", "program"], default=["onnx", "program"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 416], metavar=("H", "W"),
                        help="example input size (multiples of 32, >= 128); the graphs accept other sizes")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static", action="store_true", help="fixed batch and size instead of dynamic")
    parser.add_argument("--no-optimize", "--no-fuse", dest="no_optimize", action="store_true",
                        help="export the reference model, without detres.runtime.optimize(backend='export') "
                             "(frozen BN folded into convs); --no-fuse is the old name")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="parity tolerance on DETR outputs, RPN logits/deltas and box-stage scores")
    parser.add_argument("--box-atol", type=float, default=1e-2, help="parity tolerance on box-stage boxes (pixels)")
    args = parser.parse_args(argv)

    from detres.checkpoint import load_checkpoint
    from detres.export import export_onnx, export_program, parity_onnx, parity_program, raw_graph
    from detres.modeling.build import build_model
    from detres.runtime import optimize

    cfg = load_config_from_args(args)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    if not args.no_optimize:  # traceable passes only; eager keeps the graphs' RoIAlign kernel
        optimize(model, backend="export")
    graph = raw_graph(model)
    h, w = args.image_size
    if h % 32 or w % 32:
        raise ValueError(f"--image-size {h} {w}: use multiples of 32 (the padded sizes the model sees)")
    g = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, h, w, generator=g)
    checks = [example] if args.static else [example, torch.randn(2, 3, h + 64, w + 32, generator=g)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, float]] = {}
    detections: dict[str, dict] = {}
    if "onnx" in args.format:
        path = export_onnx(graph, example, out / "model.onnx", args.opset, dynamic=not args.static)
        report["onnx"] = parity_onnx(graph, path, checks)
        print(f"wrote {path}")
    if "program" in args.format:
        prog = export_program(graph, example, dynamic=not args.static)
        torch.export.save(prog, str(out / "model.pt2"))
        report["program"] = parity_program(graph, prog, checks)
        print(f"wrote {out / 'model.pt2'}")
    if graph.kind == "frcnn":
        detections = _faster_rcnn_box_stage(model, graph, checks, out, args, report)
    (out / "parity.json").write_text(json.dumps({**report, **{f"detections_{k}": v for k, v in detections.items()}}, indent=1))
    # End to end, near-tied detections may swap at the threshold / NMS / top-k cutoff: allow 1%.
    ok = all(d["unmatched"] <= 0.01 * max(1, sum(d["detections"])) for d in detections.values())
    for fmt, diffs in report.items():
        print(f"{fmt} vs eager on {len(checks)} inputs: max abs diff " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        # Feature maps are unnormalized (large magnitudes): the tolerances apply to the head outputs.
        for k, v in diffs.items():
            tol = args.box_atol if k == "boxes" else args.atol
            if k.startswith(("pred_", "logits_", "deltas_")) or k in ("scores", "boxes"):
                if v > tol:
                    ok = False
                    print(f"  {fmt} {k}: {v:.2e} > {tol}")
    print(f"parity {'OK' if ok else 'FAILED'}: head outputs within atol {args.atol}, boxes within {args.box_atol} px")
    return 0 if ok else 1


def _faster_rcnn_box_stage(model, graph, checks, out: Path, args: argparse.Namespace, report: dict) -> dict[str, dict]:
    """Export Faster R-CNN's box stage, add its parity to ``report``, and check both exported graphs
    end to end (with the model's eager glue, ``ExportedFasterRCNN``) against ``model(images)`` on two
    random images: per format, ``compare_detections``' result."""
    from detres.benchmark.reference import compare_detections
    from detres.export import (
        BoxGraph,
        ExportedFasterRCNN,
        box_stage_inputs,
        export_box_onnx,
        export_box_program,
        onnx_runner,
        parity_box,
        program_runner,
    )

    box = BoxGraph(model).eval()
    box_checks = [box_stage_inputs(graph, x, num_rois=64 * len(x), seed=i) for i, x in enumerate(checks)]
    box_example = box_checks[0] if args.static else box_stage_inputs(graph, checks[-1], num_rois=16, seed=9)
    runners = {}  # end to end needs graphs that take any image size
    onnx_path = prog = None
    if "onnx" in args.format:
        onnx_path = export_box_onnx(box, box_example, out / "box_stage.onnx", args.opset, dynamic=not args.static)
        runners["onnx"] = ExportedFasterRCNN(
            model, onnx_runner(out / "model.onnx", ["images"]), onnx_runner(onnx_path, box.input_names)
        )
        print(f"wrote {onnx_path}")
    if "program" in args.format:
        prog = export_box_program(box, box_example, dynamic=not args.static)
        torch.export.save(prog, str(out / "box_stage.pt2"))
        runners["program"] = ExportedFasterRCNN(
            model, program_runner(torch.export.load(str(out / "model.pt2"))), program_runner(prog)
        )
        print(f"wrote {out / 'box_stage.pt2'}")
    for fmt, diffs in parity_box(box, box_checks, onnx_path, prog).items():
        report[f"{fmt}_box_stage"] = diffs
    h, w = args.image_size
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=g).float(),
              torch.randint(0, 256, (3, h + 40, w - 24), generator=g).float()]
    with torch.no_grad():
        ref = model(images)
    detections = {}
    for fmt, run in ({} if args.static else runners).items():
        cmp = compare_detections(run(images), ref, label_offset=0, atol=args.box_atol, score_atol=args.atol)
        detections[fmt] = cmp
        print(f"{fmt} end to end vs model(images): {cmp['detections']} detections, identical {cmp['identical']} "
              f"(max box diff {cmp['max_box_diff']:.2e} px, max score diff {cmp['max_score_diff']:.2e})")
    return detections
