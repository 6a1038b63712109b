"""``detres train --config C [--resume [PATH]] [--eval-only] [--weights W] [--import M] [key=value ...]``.

Writes ``train.output_dir``: ``config.yaml``, ``metrics.jsonl``, ``model_{iter:07d}.pth``,
``model_final.pth``, ``last_checkpoint``, ``eval_*.json``. Several processes / machines:
``torchrun --nproc_per_node N tools/train.py ...`` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detres.cli.common import plain_text
from detres.config.args import add_config_args, load_config_from_args
from detres.engine.interrupt import EXIT_CODE as INTERRUPT_EXIT_CODE
from detres.engine.interrupt import TrainingInterrupted
from detres.engine.logger import setup_logging
from detres.utils import distributed as du

logger = logging.getLogger("detres.train")


def _split_resume(args: argparse.Namespace) -> None:
    # `--resume key=value` : argparse gave the first override to --resume; hand it back.
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).is_file():
        args.overrides.insert(0, args.resume)
        args.resume = True


def main(argv: list[str] | None = None) -> int:
    """Train (or evaluate) a model from a config; returns the exit code."""
    parser = argparse.ArgumentParser(prog="detres train", description=plain_text(__doc__),
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
            from detres.engine.evaluation import eval_only

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
            except TrainingInterrupted:  # Ctrl-C: the trainer saved the iteration and said so
                return INTERRUPT_EXIT_CODE
            except KeyboardInterrupt:  # a second Ctrl-C: stopped mid-step, nothing saved
                logger.error("interrupted at iter %d before it could be saved; resume with `--resume` from "
                             "the last checkpoint", trainer.iter)
                return INTERRUPT_EXIT_CODE
        if du.is_main_process() and results:
            logger.info("evaluation: %s", ", ".join(f"{k}={v:.4f}" for k, v in results.items() if isinstance(v, float)))
    finally:
        if du.is_dist():
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
