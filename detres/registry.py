"""Registries of buildable classes and the one ``instantiate`` that builds config nodes.

A config node is a mapping with a ``_target_`` key: a registered short name (``ResNet``) or a dotted
import path (``torch.optim.AdamW``, ``my_pkg.nets.MyBackbone``).

This module sits at the bottom of the house: it imports none of the packages that register into it.
Classes register themselves where they are defined (``@BACKBONES.register()``); each package's
``__init__`` imports its modules, and ``detres/__init__`` imports the packages.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "Registry", "BACKBONES", "NECKS", "HEADS", "LAYERS", "DETECTORS", "DATASETS", "TRANSFORMS",
    "ALL_REGISTRIES", "locate", "instantiate", "import_modules", "close_matches",
]


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Nearest names to ``name`` among ``candidates`` (case-insensitive), best first."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


class Registry:
    """A name -> class table. ``@REG.register()`` registers a class under its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._obj: dict[str, Any] = {}

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Register ``obj`` (usable as ``@register()``, ``@register`` or ``register(cls)``)."""

        def deco(o: Any) -> Any:
            key = name or o.__name__
            if key in self._obj and self._obj[key] is not o:
                raise KeyError(
                    f"{self.name} registry already has '{key}' "
                    f"(from {self._obj[key].__module__}); pick another class name."
                )
            self._obj[key] = o
            return o

        return deco if obj is None else deco(obj)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a KeyError lists close matches when absent."""
        if name not in self._obj:
            hint = close_matches(name, self._obj)
            raise KeyError(
                f"'{name}' is not in the {self.name} registry"
                + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                + f" Registered: {', '.join(sorted(self._obj)) or '(none)'}. If it lives in your own "
                "module, add it to `custom_imports` in the config or pass `--import your.module`."
            )
        return self._obj[name]

    def __contains__(self, name: str) -> bool:
        return name in self._obj

    def list(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._obj)

    def __repr__(self) -> str:
        return f"Registry({self.name}: {', '.join(self.list())})"


BACKBONES = Registry("BACKBONES")
NECKS = Registry("NECKS")
HEADS = Registry("HEADS")
LAYERS = Registry("LAYERS")  # parts that heads are composed of (box coders, matchers, samplers, MLPs, transformers, ...)
DETECTORS = Registry("DETECTORS")
DATASETS = Registry("DATASETS")
TRANSFORMS = Registry("TRANSFORMS")
ALL_REGISTRIES = [BACKBONES, NECKS, HEADS, LAYERS, DETECTORS, DATASETS, TRANSFORMS]


def import_modules(modules: Iterable[str]) -> None:
    """Import a user's modules so that their ``@X.register()`` decorators run."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ImportError(
                f"custom import '{mod}' failed: {e}. Check the module path and that it is on PYTHONPATH."
            ) from e


def _all_registered() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for reg in ALL_REGISTRIES:
        out.update(reg._obj)
    return out


def locate(target: str) -> Any:
    """Resolve a registered short name or a dotted import path to an object.

    Built-in names are registered where their classes are defined; ``import detres`` (which runs before
    this module can be imported) imports every subpackage that registers, so they are all present.
    """
    registered = _all_registered()
    if target in registered:
        return registered[target]
    if "." in target:
        parts = target.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                break
    hint = close_matches(target, registered)
    raise KeyError(
        f"_target_ '{target}' is neither registered nor importable"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + " Use a registered name (`detres list`) or a full dotted path (my_pkg.module.Class), and list "
        "your module in `custom_imports`."
    )


def instantiate(node: Any, **injected: Any) -> Any:
    """Build a config node.

    Mappings with ``_target_`` become objects: a class with a ``from_config`` classmethod gets the
    node's other keys (children still as plain data, so it can pass shapes down); anything else gets
    its children built first. ``injected`` keyword arguments (e.g. ``input_shape``) are added.
    Lists are built element-wise; other values are returned as they are.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, Mapping) or "_target_" not in node:
        if isinstance(node, Mapping):
            return {k: instantiate(v) for k, v in node.items()}
        return node
    target = locate(node["_target_"])
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    kwargs.update(injected)
    builder: Callable[..., Any]
    if inspect.isclass(target) and "from_config" in target.__dict__:
        builder = target.from_config
    else:
        builder = target
        kwargs = {k: (v if k in injected else instantiate(v)) for k, v in kwargs.items()}
    try:
        return builder(**kwargs)
    except TypeError as e:
        raise TypeError(f"building '{node['_target_']}' failed: {e}") from e
