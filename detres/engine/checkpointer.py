"""Training checkpoints: atomic writes, retention, ``last_checkpoint``, and RNG state capture.

A checkpoint is ``{"format": "detres", "model": state_dict, "optimizer", "scheduler", "scaler",
"ema", "ema_updates", "iteration", "data_position", "rng": [per-rank states], "config", "dataset_meta",
"best"}``; ``detres.load_checkpoint`` reads its ``model`` (or ``ema``) entry, and everything in it
loads with ``torch.load(weights_only=True)``.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and fsync'ed, and
the file is renamed over the target with ``os.replace``; a crash mid-write leaves the previous files
untouched (the temporary file is removed at the next start).
"""
from __future__ import annotations

import io
import logging
import os
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detres.checkpoint.io import torch_load

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "atomic_write_bytes", "get_rng_state", "set_rng_state", "to_plain", "restore_like"]

LAST_FILE = "last_checkpoint"
PERIODIC = re.compile(r"^model_(\d{7})\.pth$")
TMP_PREFIX = ".tmp-"
#: Test hook: ``DETRES_CKPT_PAUSE=name:seconds`` sleeps halfway through writing ``name``.
PAUSE_ENV = "DETRES_CKPT_PAUSE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}"
    pause = os.environ.get(PAUSE_ENV, "")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if pause and pause.split(":")[0] == path.name:
                f.flush()
                time.sleep(float(pause.split(":")[1]))
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def to_plain(obj: Any) -> Any:
    """Containers that ``torch.load(weights_only=True)`` accepts: Counters become dicts, numpy arrays tensors."""
    if isinstance(obj, Counter):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def restore_like(live: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """Give ``loaded`` values back the container types of ``live`` (a dict saved from a Counter)."""
    out = dict(loaded)
    for k, v in loaded.items():
        if isinstance(live.get(k), Counter) and isinstance(v, dict):
            out[k] = Counter(v)
    return out


def get_rng_state() -> dict[str, Any]:
    """This process' python, numpy and torch (CPU and CUDA) RNG states, as plain containers."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": to_plain(np_state),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by ``get_rng_state``."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = dict(state["numpy"])
    npst["state"] = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in npst["state"].items()}
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and finds checkpoints in ``output_dir``.

    Args:
        output_dir: the run's folder.
        keep_last: periodic ``model_{iter:07d}.pth`` files kept (0 = all).
        save_to_disk: False on ranks other than 0 (they never write).
    """

    def __init__(self, output_dir: str | os.PathLike, keep_last: int = 3, save_to_disk: bool = True) -> None:
        self.dir = Path(output_dir)
        self.keep_last = int(keep_last)
        self.save_to_disk = save_to_disk
        if save_to_disk:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(f"{TMP_PREFIX}*"):  # left by a crash mid-write
                logger.warning("removing partial checkpoint %s left by an interrupted write", stale)
                stale.unlink(missing_ok=True)

    def save(self, name: str, state: dict[str, Any], update_last: bool = True) -> Path | None:
        """Atomically write ``state`` as ``output_dir/name``; then point ``last_checkpoint`` at it and
        prune old periodic checkpoints. Returns the path (None on non-writing ranks)."""
        if not self.save_to_disk:
            return None
        buf = io.BytesIO()
        torch.save({"format": "detres", **to_plain(state)}, buf)
        path = self.dir / name
        atomic_write_bytes(path, buf.getvalue())
        if update_last:
            atomic_write_bytes(self.dir / LAST_FILE, (name + "\n").encode())
            self._prune()
        logger.info("saved checkpoint %s", path)
        return path

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        periodic = sorted(p for p in self.dir.iterdir() if PERIODIC.match(p.name))
        last = self.last_name()
        for p in periodic[: max(0, len(periodic) - self.keep_last)]:
            if p.name != last:
                p.unlink(missing_ok=True)

    def last_name(self) -> str | None:
        """The file name recorded in ``last_checkpoint`` (None when absent)."""
        f = self.dir / LAST_FILE
        if not f.is_file():
            return None
        name = f.read_text().strip()
        return name or None

    def latest(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names, if that file exists."""
        name = self.last_name()
        if name is None:
            return None
        path = self.dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.dir / LAST_FILE} names '{name}', which does not exist; pass --resume PATH explicitly "
                "or fix last_checkpoint."
            )
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a detres training checkpoint (weights_only)."""
        path = Path(path)
        obj = torch_load(path)
        if not isinstance(obj, dict) or obj.get("format") != "detres" or "model" not in obj:
            raise ValueError(f"{path}: not a detres training checkpoint (no format/model entries); use --weights to load plain weights.")
        return obj
