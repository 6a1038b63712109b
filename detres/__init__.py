"""detres: object detection in plain PyTorch (see DESIGN.md for the public API)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from detres.checkpoint import load_checkpoint
from detres.config import load_config
from detres.modeling import build_model

__all__ = ["load_config", "build_model", "load_checkpoint", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":  # imported lazily: it pulls in the data pipeline
        from detres.predictor import Predictor

        return Predictor
    if name == "runtime":  # imported on first use: inference passes, not needed to train
        import importlib

        return importlib.import_module("detres.runtime")
    raise AttributeError(f"module 'detres' has no attribute {name!r}")
