"""``detres export --config C [--weights W] --out DIR [--format onnx program] [key=value ...]``: write a
detector's dense graph as ONNX (opset >= 17) and a ``torch.export`` program, then check both against
eager PyTorch on the same random inputs (two batch sizes and image sizes) and print the max abs diffs."""
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
    parser.add_argument("--no-fuse", action="store_true", help="export without folding frozen BN into convs")
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on DETR outputs / RPN logits")
    args = parser.parse_args(argv)

    from detres.checkpoint import load_checkpoint
    from detres.export import export_onnx, export_program, parity_onnx, parity_program, raw_graph
    from detres.modeling.build import build_model
    from detres.modeling.fuse import optimize_for_inference

    cfg = load_config_from_args(args)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    if not args.no_fuse:
        optimize_for_inference(model)
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
    if "onnx" in args.format:
        path = export_onnx(graph, example, out / "model.onnx", args.opset, dynamic=not args.static)
        report["onnx"] = parity_onnx(graph, path, checks)
        print(f"wrote {path}")
    if "program" in args.format:
        prog = export_program(graph, example, dynamic=not args.static)
        torch.export.save(prog, str(out / "model.pt2"))
        report["program"] = parity_program(graph, prog, checks)
        print(f"wrote {out / 'model.pt2'}")
    (out / "parity.json").write_text(json.dumps(report, indent=1))
    worst_all = 0.0
    for fmt, diffs in report.items():
        worst = max(diffs.values())
        print(f"{fmt} vs eager on {len(checks)} inputs: max abs diff " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        # Feature maps are unnormalized (large magnitudes): the tolerance applies to the head outputs.
        heads = [v for k, v in diffs.items() if k.startswith(("pred_", "logits_", "deltas_"))]
        worst_all = max(worst_all, max(heads) if heads else worst)
    ok = worst_all <= args.atol
    print(f"parity {'OK' if ok else 'FAILED'}: max abs diff of head outputs {worst_all:.2e} (atol {args.atol})")
    return 0 if ok else 1
