"""Train: seconds per iteration of the real training step (the Trainer's loader + step runner),
split into data time and compute time.

    tools/benchmark.py train --config C [--iters 20] [--warmup 3] [key=value ...] [--json]

``--compare torchvision`` instead times the bare training step (forward, backward, SGD) on an
in-memory batch, beside torchvision's Faster R-CNN on the same converted weights (``train_compare``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``tools/benchmark.py train``."""
    parser.add_argument("--config", required=True, help="training config")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; 3 with --compare)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3; 1 with --compare)")
    parser.add_argument("--compare", choices=["torchvision"], default=None,
                        help="time torchvision's Faster R-CNN training step on the same weights and batch, alternating")
    parser.add_argument("--image-size", type=int, nargs=2, default=[512, 672], metavar=("H", "W"),
                        help="with --compare: size of the synthetic in-memory batch")
    parser.add_argument("--batch", type=int, default=2, help="with --compare: images per step")
    parser.add_argument("--boxes", type=int, default=8, help="with --compare: ground-truth boxes per image")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--iters`` optimizer steps after ``--warmup``; returns medians and means in seconds.
    With ``--compare`` the steps run on a synthetic batch beside torchvision's (``train_compare``)."""
    if args.compare:
        from detres.benchmark import train_compare

        args.iters = 3 if args.iters is None else args.iters
        args.warmup = 1 if args.warmup is None else args.warmup
        return train_compare.run(args)
    args.iters = 20 if args.iters is None else args.iters
    args.warmup = 3 if args.warmup is None else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    from detres.config.args import load_config_from_args
    from detres.engine import Trainer
    from detres.engine.logger import memory_mb

    with tempfile.TemporaryDirectory() as tmp:
        args.overrides = [*args.overrides, f"train.output_dir={tmp}", "train.tensorboard=false"]
        cfg = load_config_from_args(args)
        t = Trainer(cfg)
        t._loader = t.build_train_loader()
        if t.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(t.device)
        data_t, step_t = [], []
        for it in range(1, args.warmup + args.iters + 1):
            _sync(t.device)
            t0 = time.perf_counter()
            batches = [t._next_batch() for _ in range(t.accumulate)]
            t1 = time.perf_counter()
            t.runner(batches, it)
            _sync(t.device)
            t2 = time.perf_counter()
            if it > args.warmup:
                data_t.append(t1 - t0)
                step_t.append(t2 - t1)
        total = [a + b for a, b in zip(data_t, step_t)]
        result = {
            "config": args.config, "device": str(t.device), "batch_size": int(cfg.train.batch_size),
            "accumulate": t.accumulate, "amp": cfg.train.amp, "iters": args.iters,
            "s_per_iter": statistics.median(total), "s_per_iter_mean": statistics.fmean(total),
            "data_s_per_iter": statistics.median(data_t), "compute_s_per_iter": statistics.median(step_t),
            "images_per_s": int(cfg.train.batch_size) / statistics.median(total),
            "peak_memory_mb": round(memory_mb(t.device), 1),
        }
    if not getattr(args, "json", False):
        print(f"{args.config} on {result['device']}: {result['s_per_iter']:.4f} s/iter "
              f"(data {result['data_s_per_iter']:.4f} s, compute {result['compute_s_per_iter']:.4f} s), "
              f"{result['images_per_s']:.1f} images/s, peak memory {result['peak_memory_mb']:.0f} MB")
    return result
