"""Training logs: ``metrics.jsonl`` (one JSON object per logged iteration), TensorBoard scalars and a
progress line (tqdm bar on a terminal, plain lines otherwise). Only rank 0 builds a writer."""
from __future__ import annotations

import datetime
import json
import logging
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from detres.utils import distributed as du

logger = logging.getLogger("detres.train")

__all__ = ["MetricsWriter", "memory_mb", "format_eta", "setup_logging"]


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


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA max allocated on GPU, the process' max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def format_eta(seconds: float) -> str:
    """``1:02:03``-style duration."""
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class MetricsWriter:
    """Accumulates per-iteration scalars and writes their window mean every ``log_period`` iterations.

    Args:
        output_dir: where ``metrics.jsonl`` and TensorBoard's ``tb/`` go.
        max_iter: the run's last iteration (for the ETA and the bar).
        start_iter: the first iteration of this process (resume).
        tensorboard: write TensorBoard scalars when the package is installed.
        progress_bar: tqdm bar (None: only when stderr is a terminal).
    """

    def __init__(
        self, output_dir: str | os.PathLike, max_iter: int, start_iter: int = 0,
        tensorboard: bool = True, progress_bar: bool | None = None,
    ) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._truncate_after(start_iter)
        self.max_iter, self.start_iter = max_iter, start_iter
        self._window: dict[str, list[float]] = defaultdict(list)
        self._t0 = time.perf_counter()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=start_iter + 1 if start_iter else None)
            except ImportError:
                logger.info("tensorboard is not installed; skipping TensorBoard scalars (pip install 'detres[viz]')")
        use_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=max_iter, initial=start_iter, dynamic_ncols=True, desc="train")

    def _truncate_after(self, start_iter: int) -> None:
        # A resumed run rewrites the iterations after its checkpoint: drop the crashed run's lines
        # for them so that the file holds each iteration once.
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= start_iter:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        self.path.write_text("".join(k + "\n" for k in keep))

    def put(self, **scalars: float) -> None:
        """Record scalars of the current iteration."""
        for k, v in scalars.items():
            self._window[k].append(float(v))

    def eta_seconds(self, it: int) -> float:
        """Remaining time from the mean time per iteration of this process so far."""
        done = it - self.start_iter
        if done <= 0:
            return 0.0
        return (time.perf_counter() - self._t0) / done * (self.max_iter - it)

    def write(self, it: int, lr: float, device: torch.device) -> dict[str, Any]:
        """Write the window means of iteration ``it`` (1-based) and clear the window."""
        rec: dict[str, Any] = {"iter": it, "lr": lr}
        for k, vals in self._window.items():
            rec[k] = sum(vals) / len(vals)
        rec["eta_s"] = round(self.eta_seconds(it), 1)
        rec["memory_mb"] = round(memory_mb(device), 1)
        self._window.clear()
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "iter":
                    self._tb.add_scalar(f"train/{k}", v, it)
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in rec.items() if k.startswith("loss"))
        line = (f"iter {it}/{self.max_iter}  {losses}  lr: {lr:.3g}  time: {rec.get('time', 0):.3f}s  "
                f"data: {rec.get('data_time', 0):.3f}s  eta: {format_eta(rec['eta_s'])}  mem: {rec['memory_mb']:.0f}MB")
        if self._bar is not None:
            self._bar.set_postfix_str(line.split("  ", 1)[1], refresh=False)
        else:
            logger.info(line)
        return rec

    def advance(self, n: int = 1) -> None:
        """Move the progress bar."""
        if self._bar is not None:
            self._bar.update(n)

    def write_eval(self, it: int, results: dict[str, Any]) -> None:
        """Append evaluation stats as ``{"iter": it, "eval/AP": ...}`` (numbers only)."""
        rec: dict[str, Any] = {"iter": it}
        rec.update({f"eval/{k}": float(v) for k, v in results.items() if isinstance(v, (int, float))})
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "iter":
                    self._tb.add_scalar(k, v, it)

    def close(self) -> None:
        """Flush and close TensorBoard and the bar."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
