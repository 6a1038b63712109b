"""Reading weight files safely: torch files with ``weights_only=True``, detectron2 ``.pkl`` files
through an unpickler that admits numpy arrays and nothing else, and ``.safetensors``."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2's model-zoo ``.pkl``: numpy arrays, dicts and scalars only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
                module = module.replace("numpy.core", "numpy._core")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load '{module}.{name}' from a pickle: only numpy arrays are allowed in weight files"
        )


def _torch_load_reason(e: BaseException) -> str:
    """What went wrong in ``torch.load``, without torch's advice to retry with ``weights_only=False``
    (which would run whatever code the file carries)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "WeightsUnpickler error:" in msg:
        detail = msg.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        if detail.startswith("Unsupported global"):
            found = re.search(r"GLOBAL (\S+)", detail)
            what = found.group(1) if found else "a class"
            return (f"it stores Python objects ({what}), not only tensors; detres reads tensors and plain "
                    "containers only: re-save the weights with torch.save(model.state_dict(), path)")
        return f"not a torch file or a damaged one ({detail or 'unreadable pickle'})"
    first = msg.strip().split("\n")[0].split(". ")[0][:200]
    return f"not a torch file or a damaged one ({type(e).__name__}: {first})"


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with an error that names the file and says it is
    not a checkpoint (never torch's advice to turn ``weights_only`` off)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... on bad bytes
        raise ValueError(f"{p} is not a checkpoint detres can read: {_torch_load_reason(e)}. "
                         "Re-download or re-export the file.") from None


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw object stored in a weights file (a dict), read without executing code."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        if p.suffix == ".pkl":
            with open(p, "rb") as f:
                obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            return _as_dict(torch_load(p), p)
    except ValueError:
        raise
    except Exception as e:  # the numpy-only unpickler's refusal, safetensors' SafetensorError, a short file
        raise ValueError(
            f"{p} is not a checkpoint detres can read ({type(e).__name__}: {str(e)[:200]}); re-download or "
            "re-export the file."
        ) from None
    return _as_dict(obj, p)


def _as_dict(obj: Any, p: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{p} is not a checkpoint: expected a dict of weights, found {type(obj).__name__}")
    return obj


def to_tensor_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """numpy arrays -> float32/int tensors; non-array entries dropped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            out[k] = v.float() if v.is_floating_point() else v
    return out


def unwrap_state_dict(obj: dict[str, Any]) -> dict[str, Any]:
    """The state dict inside a checkpoint: ``{"model": sd}``, ``{"state_dict": sd}``, ``{"ema": ...}`` or sd.

    The official RT-DETR layout ``{"ema": {"module": sd}, ...}`` gives the EMA weights (those the
    official tools evaluate and release), even when the file also holds ``"model"``."""
    ema = obj.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        return ema["module"]
    for key in ("model", "state_dict", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj
