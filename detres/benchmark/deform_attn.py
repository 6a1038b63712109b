"""Deform-attn: the multi-scale deformable attention sampling op alone, the reference ``grid_sample``
version against the gather version of ``detres.runtime`` (the ``ms_deform_gather`` pass), at the
full-size Deformable DETR shapes (800x1066 image: levels 100x134, 50x67, 25x34, 13x17; 8 heads of 32,
4 points): the encoder (every token queries, Q = S = 17821) and the decoder (Q = 300).

    tools/benchmark.py deform-attn [--iters 10] [--warmup 2] [--batch 1] [--threads T] [--device cpu] [--json]

Median wall ms (and CPU ms of this process) over alternating runs, the ratio gather / reference, the max abs difference, and peak
memory of one call: on CPU the growth of the high-water RSS (``VmHWM`` of ``/proc/self/status``) over
the first call in a fresh subprocess per op and shape (inputs excluded); on CUDA
``torch.cuda.max_memory_allocated`` over one call, inputs excluded.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from detres.benchmark.reference import summarize, time_alternating

#: The levels of an 800x1066 image at strides 8, 16, 32, 64 (Deformable DETR's four levels).
FULL_SHAPES = [(100, 134), (50, 67), (25, 34), (13, 17)]
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def _ops() -> dict[str, Any]:
    from detres.modeling.layers.ms_deform_attn import ms_deform_attn_sample
    from detres.runtime.deform_attn import ms_deform_attn_gather

    return {"grid_sample": ms_deform_attn_sample, "gather": ms_deform_attn_gather}


def make_inputs(batch: int, queries: int, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    """value [B, S, 8, 32] unit normal, locations [B, Q, 8, 4, 4, 2] uniform in [-0.05, 1.05] (a few
    samples in the padding), softmaxed weights [B, Q, 8, 4, 4]."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in FULL_SHAPES)
    n = len(FULL_SHAPES)
    value = torch.randn(batch, s, HEADS, HEAD_DIM, generator=g)
    loc = torch.rand(batch, queries, HEADS, n, POINTS, 2, generator=g) * 1.1 - 0.05
    w = torch.randn(batch, queries, HEADS, n * POINTS, generator=g).softmax(-1).view(batch, queries, HEADS, n, POINTS)
    return value.to(device), loc.to(device), w.to(device)


def peak_memory_mb(op: str, batch: int, queries: int, device: str, threads: int = 0) -> float:
    """Peak memory of one call of ``op`` beyond its inputs, MB (see the module docstring)."""
    if device.startswith("cuda"):
        value, loc, w = make_inputs(batch, queries, device)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            _ops()[op](value, FULL_SHAPES, loc, w)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # VmHWM (the high-water RSS of this process' memory map) is reset by exec; ru_maxrss is not (a
    # child of a big parent would start at the parent's peak), so it is the fallback off Linux only.
    code = (
        "import resource, torch\n"
        "def hwm():\n"
        "    try:\n"
        "        for line in open('/proc/self/status'):\n"
        "            if line.startswith('VmHWM:'):\n"
        "                return int(line.split()[1])\n"
        "    except OSError:\n"
        "        pass\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"torch.set_num_threads({threads}) if {threads} else None\n"
        "from detres.benchmark.deform_attn import FULL_SHAPES, _ops, make_inputs\n"
        f"v, l, w = make_inputs({batch}, {queries})\n"
        f"f = _ops()[{op!r}]\n"
        "before = hwm()\n"
        "with torch.inference_mode():\n    f(v, FULL_SHAPES, l, w)\n"
        "print((hwm() - before) / 1024)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``tools/benchmark.py deform-attn``."""
    parser.add_argument("--iters", type=int, default=10, help="timed rounds per shape (alternating the two ops)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each op first")
    parser.add_argument("--batch", type=int, default=1, help="images B")
    parser.add_argument("--decoder-queries", type=int, default=300, help="decoder queries Q")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both ops at the encoder and decoder shapes; returns per shape medians (ms), the ratio
    gather / grid_sample, max abs difference and peak memory (MB)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    s = sum(h * w for h, w in FULL_SHAPES)
    result: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                              "memory": "cuda max_memory_allocated" if device.type == "cuda"
                              else "high-water RSS (VmHWM) growth over one call in a fresh subprocess", "shapes": {}}
    for label, q in (("encoder", s), ("decoder", args.decoder_queries)):
        value, loc, w = make_inputs(args.batch, q, args.device)
        ops = _ops()
        with torch.inference_mode():
            diff = float((ops["gather"](value, FULL_SHAPES, loc, w) - ops["grid_sample"](value, FULL_SHAPES, loc, w))
                         .abs().max())
            times = time_alternating({k: (lambda f=f: f(value, FULL_SHAPES, loc, w)) for k, f in ops.items()},
                                     args.iters, args.warmup, sync)
        ms = {k: summarize(t["wall"])["median"] * 1e3 for k, t in times.items()}
        cpu = {k: summarize(t["cpu"])["median"] * 1e3 for k, t in times.items()}
        row = {"queries": q, "tokens": s, "grid_sample_ms": ms["grid_sample"], "gather_ms": ms["gather"],
               "ratio": ms["gather"] / ms["grid_sample"], "grid_sample_cpu_ms": cpu["grid_sample"],
               "gather_cpu_ms": cpu["gather"], "cpu_ratio": cpu["gather"] / cpu["grid_sample"], "max_abs_diff": diff}
        if not args.no_memory:
            for k in ops:
                row[f"{k}_peak_mb"] = peak_memory_mb(k, args.batch, q, args.device, args.threads)
        result["shapes"][label] = row
    if not getattr(args, "json", False):
        print(f"deform-attn on {result['device']} ({result['threads']} threads), B={args.batch}, "
              f"S={s} tokens, M={HEADS}, D={HEAD_DIM}, L={len(FULL_SHAPES)}, P={POINTS}; memory: {result['memory']}")
        for label, r in result["shapes"].items():
            mem = "" if args.no_memory else (f", peak {r['grid_sample_peak_mb']:.0f} MB -> {r['gather_peak_mb']:.0f} MB")
            print(f"  {label:8s} Q={r['queries']:6d}: grid_sample {r['grid_sample_ms']:8.2f} ms, gather "
                  f"{r['gather_ms']:8.2f} ms, ratio {r['ratio']:.2f} (cpu-time ratio {r['cpu_ratio']:.2f}){mem}, "
                  f"max |diff| {r['max_abs_diff']:.1e}")
    return result
