"""``detres export --config C [--weights W] --out DIR [--format onnx program] [key=value ...]``: write a
detector's traceable graphs (``model.graphs()``) as ONNX (opset >= 17) and ``torch.export`` programs,
``DIR/<graph>.onnx`` / ``DIR/<graph>.pt2``, then check each against eager PyTorch and the whole
detector run on them against ``model(images)`` (``detres.export.export_and_check``).

DETR and Deformable DETR: one graph, ``dense`` (images, pad mask -> every decoder layer's logits and
boxes; two-stage also the encoder proposals and the selected indices). Faster
R-CNN: ``dense`` (images -> pyramid and RPN outputs) and ``box`` (pooled levels + RoIs -> class
logits and box deltas); the model's own eager code selects proposals between them."""
from __future__ import annotations

import argparse

import torch

from detres.cli.common import plain_text
from detres.config.args import add_config_args, load_config_from_args


def main(argv: list[str] | None = None) -> int:
    """Export, then run the parity check; exit 1 when a difference passes ``--atol``."""
    parser = argparse.ArgumentParser(prog="detres export", description=plain_text(__doc__))
    add_config_args(parser)
    parser.add_argument("--weights", default=None, help="checkpoint to load (any supported layout)")
    parser.add_argument("--out", required=True, help="output folder (<graph>.onnx, <graph>.pt2, parity.json)")
    parser.add_argument("--format", nargs="+", choices=["onnx", "program"], default=["onnx", "program"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 416], metavar=("H", "W"),
                        help="example input size (multiples of the graphs' size multiple: 32 for Faster R-CNN and "
                             "DETR, any for Deformable DETR; >= 64); the graphs accept other sizes")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static", action="store_true", help="fixed batch and size instead of dynamic")
    parser.add_argument("--no-optimize", "--no-fuse", dest="no_optimize", action="store_true",
                        help="export the reference model, without detres.runtime.optimize(backend='export') "
                             "(frozen BN folded into convs); --no-fuse is the old name")
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on the graphs' head outputs")
    args = parser.parse_args(argv)

    from detres.checkpoint import load_checkpoint
    from detres.export import export_and_check, summary_lines
    from detres.modeling.build import build_model
    from detres.runtime import optimize

    cfg = load_config_from_args(args)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    if not args.no_optimize:  # traceable passes only (frozen BN folded into convs)
        optimize(model, backend="export")
    report, ok = export_and_check(
        model, args.out, formats=tuple(args.format), image_size=tuple(args.image_size), opset=args.opset,
        dynamic=not args.static, atol=args.atol,
    )
    print("\n".join(summary_lines(report, args.atol)))
    return 0 if ok else 1
