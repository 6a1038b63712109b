"""``detres eval``: COCO bbox evaluation of a results file (``--gt A --results R``) or of a model
(``--config C --weights W [key=value ...]``, also under torchrun)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detres.cli.common import plain_text
from detres.evaluation import BACKENDS, STAT_NAMES, evaluate_results, format_stats, markdown_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detres eval", description=plain_text(__doc__))
    p.add_argument("--gt", help="COCO ground-truth json (results-file mode)")
    p.add_argument("--results", help="COCO results json: list of detections or a dict with 'annotations'")
    p.add_argument("--config", help="YAML config (model mode)")
    p.add_argument("--weights", help="checkpoint to evaluate (model mode)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    p.add_argument("--batch-size", type=int, default=None, help="eval batch size (default cfg.eval.batch_size)")
    p.add_argument("--output", help="write the 12 stats + per_category here (json)")
    p.add_argument("--output-dir", help="also write results json, per-category tables and PR arrays here")
    p.add_argument("--max-dets", type=int, nargs=3, default=None, metavar="N", help="default 1 10 100")
    p.add_argument("--iou-type", default="bbox", choices=["bbox"])
    p.add_argument("--area-ranges", type=float, nargs="+", default=None, metavar="A",
                   help="lo hi pairs, the first is 'all' (default 0 1e10 0 1024 1024 9216 9216 1e10)")
    p.add_argument("--backend", default=None, choices=list(BACKENDS))
    p.add_argument("--pr-curve", action="store_true", help="save pr_curve.png in --output-dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (model mode)")
    return p


def _report(metrics: dict[str, Any], max_dets: list[int], output: str | None) -> None:
    print(format_stats(metrics, max_dets))
    print("\nper-category:\n" + markdown_table(metrics["per_category"]))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        keep = {k: metrics[k] for k in (*STAT_NAMES, "per_category")}
        Path(output).write_text(json.dumps(keep, indent=1))


def _model_mode(args: argparse.Namespace) -> dict[str, Any] | None:
    from detres.config.args import load_config_from_args
    from detres.evaluation import evaluate_checkpoint
    from detres.utils.distributed import init_from_env

    init_from_env()
    cfg = load_config_from_args(args)
    return evaluate_checkpoint(cfg, args.weights, log=print, batch_size=args.batch_size, output_dir=args.output_dir,
                               progress=not args.no_progress, backend=args.backend, max_dets=args.max_dets,
                               area_ranges=args.area_ranges, pr_curve=args.pr_curve or None)


def main(argv: list[str] | None = None) -> int:
    """Score a results file or a model; print the stats and the per-category table."""
    args = _parser().parse_args(argv)
    max_dets = args.max_dets or [1, 10, 100]
    if args.gt or args.results:
        if not (args.gt and args.results):
            raise ValueError("results-file mode needs both --gt ann.json and --results dets.json")
        metrics = evaluate_results(args.gt, args.results, backend=args.backend or "auto", max_dets=max_dets,
                                   area_ranges=args.area_ranges, output_dir=args.output_dir, pr_curve=args.pr_curve)
    elif args.config and args.weights:
        metrics = _model_mode(args)
        if not metrics:  # not rank 0
            return 0
    else:
        print("detres eval: give --gt and --results, or --config and --weights", file=sys.stderr)
        return 2
    _report(metrics, sorted(max_dets), args.output)
    return 0
