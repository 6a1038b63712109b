"""``detres train --config C [--resume [PATH]] [--eval-only] [--weights W] [--import M] [key=value ...]``.

Writes ``train.output_dir``: ``config.yaml``, ``metrics.jsonl``, ``model_{iter:07d}.pth``,
``model_final.pth``, ``last_checkpoint``, ``eval_*.json``. Several processes / machines:
``torchrun --nproc_per_node N tools/train.py ...`` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from detres.config.args import add_config_args, load_config_from_args
from detres.utils import distributed as du

logger = logging.getLogger("detres.train")


def setup_logging(output_dir: str | None = None) -> None:
    """INFO on rank 0 (stdout and ``output_dir/log.txt``), warnings only on other ranks."""
    root = logging.getLogger()
    main = du.is_main_process()
    root.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s" if main else f"[rank {du.get_rank()}] %(message)s",
                            "%H:%M:%S")
    if not any(getattr(h, "_detres", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        h._detres = True  # type: ignore[attr-defined]
        root.addHandler(h)
    for old in [h for h in root.handlers if getattr(h, "_detres_file", False)]:  # a previous run in this process
        root.removeHandler(old)
        old.close()
    if main and output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setFormatter(fmt)
        fh._detres_file = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def _split_resume(args: argparse.Namespace) -> None:
    # `--resume key=value` : argparse gave the first override to --resume; hand it back.
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).is_file():
        args.overrides.insert(0, args.resume)
        args.resume = True


def eval_only(cfg: Any, weights: str | None) -> dict[str, Any]:
    """Evaluate ``weights`` (default: ``train.init_weights`` or the run's last checkpoint), EMA weights first."""
    import torch

    from detres.checkpoint import load_checkpoint
    from detres.engine.checkpointer import Checkpointer
    from detres.engine.evaluation import run_evaluation
    from detres.engine.trainer import resolve_device
    from detres.modeling import build_model

    out = Path(cfg.train.output_dir)
    path = weights or cfg.train.init_weights or Checkpointer(out, save_to_disk=False).latest()
    if path is None:
        raise FileNotFoundError(f"--eval-only needs --weights W (no checkpoint in {out}/last_checkpoint)")
    model = build_model(cfg)
    logger.info("%s", load_checkpoint(model, path, use_ema=True))
    model.to(resolve_device(cfg.train.device)).eval()
    with torch.no_grad():
        results = run_evaluation(cfg, model)
    if du.is_main_process() and results:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_only.json").write_text(json.dumps({"weights": str(path), **results}, indent=1, default=float))
    return results


def main(argv: list[str] | None = None) -> int:
    """Train (or evaluate) a model from a config; returns the exit code."""
    parser = argparse.ArgumentParser(prog="detres train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                        help="continue from PATH, or (no PATH) from the checkpoint named in output_dir/last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights and exit")
    parser.add_argument("--weights", default=None, help="weights to evaluate (--eval-only) or to start training from")
    args = parser.parse_args(argv)
    _split_resume(args)
    du.init_from_env()
    try:
        cfg = load_config_from_args(args)
        setup_logging(cfg.train.output_dir)
        if args.eval_only:
            results = eval_only(cfg, args.weights)
        else:
            from detres.engine import Trainer

            if args.weights:
                cfg.train.init_weights = args.weights
            trainer = Trainer(cfg)
            if args.resume:
                trainer.resume(args.resume)
            try:
                results = trainer.train()
            except FloatingPointError as e:  # the NaN/inf guard: one clear line, exit code 3
                logger.error("%s", e)
                return 3
        if du.is_main_process() and results:
            logger.info("evaluation: %s", ", ".join(f"{k}={v:.4f}" for k, v in results.items() if isinstance(v, float)))
    finally:
        if du.is_dist():
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
