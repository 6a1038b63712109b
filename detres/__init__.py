"""detres: object detection in plain PyTorch (see DESIGN.md for the public API).

Importing ``detres`` (which any ``import detres.x`` does first) imports the packages whose classes
register themselves (``detres.data``, ``detres.modeling``), so every built-in registered name is
present whenever anything under detres is imported; ``detres.registry`` itself imports none of them.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from detres import data, modeling  # noqa: F401  (their imports fill the registries)
from detres.checkpoint import load_checkpoint
from detres.config import load_config
from detres.modeling import build_model

__all__ = ["load_config", "build_model", "load_checkpoint", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":  # imported lazily: it pulls in runtime passes and image reading
        from detres.predictor import Predictor

        return Predictor
    if name == "runtime":  # imported on first use: inference passes, not needed to train
        import importlib

        return importlib.import_module("detres.runtime")
    raise AttributeError(f"module 'detres' has no attribute {name!r}")
