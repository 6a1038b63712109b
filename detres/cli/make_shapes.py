"""``detres make-shapes --out DIR --num-train N --num-val M [--seed S]``: the synthetic shapes dataset."""
from __future__ import annotations

import argparse
import os
import time

from detres.cli.common import plain_text
from detres.data.shapes import SHAPE_CLASSES, make_shapes


def main(argv: list[str] | None = None) -> int:
    """Write DIR/{train,val}/*.jpg and DIR/annotations/instances_{train,val}.json."""
    parser = argparse.ArgumentParser(prog="detres make-shapes", description=plain_text(__doc__))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=3, help=f"1..{len(SHAPE_CLASSES)}: {', '.join(SHAPE_CLASSES)}")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes rendering images (the output does not depend on it)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = make_shapes(args.out, args.num_train, args.num_val, args.seed, args.num_classes, args.workers)
    dt = time.perf_counter() - t0
    n = args.num_train + args.num_val
    print(f"wrote {n} images to {args.out} in {dt:.1f}s ({n / max(dt, 1e-9):.0f} img/s): "
          + ", ".join(str(p) for p in paths.values()))
    return 0
