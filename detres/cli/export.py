"""``detres export --config C [--weights W] --out DIR [--format onnx program] [key=value ...]``: write a
detector's graphs as ONNX (opset >= 17) and ``torch.export`` programs, then check them against eager
PyTorch on the same random inputs (two batch sizes and image sizes) and print the max abs diffs.

DETR: one graph (``model.onnx`` / ``model.pt2``). Faster R-CNN: the dense graph (``model.*``: pyramid
and RPN outputs) and the box stage (``box_stage.*``: pooled features + RoIs -> scores, decoded boxes),
each checked on its own, then both together (``ExportedFasterRCNN``: the model's eager proposal
selection and NMS between and after them) against ``model(images)`` detection for detection.
The export and the parity policy are ``detres.export.export_with_parity``."""
from __future__ import annotations

import argparse

import torch

from detres.config.args import add_config_args, load_config_from_args


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="parity tolerance on DETR outputs, RPN logits/deltas and box-stage scores")
    parser.add_argument("--box-atol", type=float, default=1e-2, help="parity tolerance on box-stage boxes (pixels)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export, then run the parity check; exit 1 when a difference passes ``--atol``."""
    args = _parser().parse_args(argv)

    from detres.checkpoint import load_checkpoint
    from detres.export import export_with_parity
    from detres.modeling.build import build_model

    cfg = load_config_from_args(args)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    report = export_with_parity(model, args.out, formats=args.format, image_size=tuple(args.image_size),
                                opset=args.opset, static=args.static, fuse=not args.no_fuse, atol=args.atol,
                                box_atol=args.box_atol)
    for fmt, diffs in report.parity.items():
        print(f"{fmt} vs eager on {report.num_checks} inputs: max abs diff "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    for line in report.failures:
        print(f"  {line}")
    print(f"parity {'OK' if report.ok else 'FAILED'}: head outputs within atol {args.atol}, "
          f"boxes within {args.box_atol} px")
    return 0 if report.ok else 1
