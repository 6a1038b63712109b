"""Optional dependencies (pip extras): import them, or fail with the one line that installs them."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "import_extra", "install_hint", "EXTRA_OF", "EXIT_MISSING_EXTRA"]

#: Exit code of a tool whose optional extra is missing (a script running several tools may go on).
EXIT_MISSING_EXTRA = 4

#: module -> the detres extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF = {"matplotlib": "viz", "tensorboard": "viz", "onnx": "export", "onnxruntime": "export",
            "faster_coco_eval": "fast", "transformers": "benchmark"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` adds it."""


def install_hint(module: str) -> str:
    """``pip install 'detres[viz]'`` (or the package itself when it belongs to no extra)."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    return f"pip install 'detres[{extra}]'" if extra else f"pip install {top}"


def import_extra(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError``: "<needed_for> needs <module>: pip install ..."."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{needed_for} needs {module.split('.')[0]}, which is not installed: "
                                f"{install_hint(module)}") from e
