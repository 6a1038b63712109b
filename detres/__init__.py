"""detres: object detection in plain PyTorch (see DESIGN.md for the public API).

Importing ``detres`` is light: the public names below are imported on first use, so that a tool that
needs no model (``tools/eval.py --gt A --results R``) never imports torch. Built-in registered names
are loaded by the registry on the first lookup (``detres.registry.BUILTIN_PACKAGES``).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["load_config", "build_model", "load_checkpoint", "Predictor", "__version__"]

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "load_config": "detres.config",
    "build_model": "detres.modeling",
    "load_checkpoint": "detres.checkpoint",
    "Predictor": "detres.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("__"):
        try:  # subpackages: detres.runtime, detres.data, ...
            return importlib.import_module(f"detres.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"detres.{name}":
                raise
    raise AttributeError(f"module 'detres' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "runtime"])
