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
    "check_targets", "ALLOWED_PREFIXES", "VETTED_BUILDERS", "TargetNotAllowedError", "config_builder", "trusted_modules",
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
            _load_builtins()
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
        if name not in self._obj:
            _load_builtins()
        return name in self._obj

    def list(self) -> list[str]:
        """Sorted registered names (the built-in ones included)."""
        _load_builtins()
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


#: Packages whose modules register the built-in classes; imported on the first lookup by short name
#: (``import detres`` itself stays light, so that scoring a results file never imports torch).
BUILTIN_PACKAGES: tuple[str, ...] = ("detres.data", "detres.modeling")

#: Dotted-path prefixes a config may name without ``custom_imports`` (whole components: ``torch.nn``
#: allows ``torch.nn.Conv2d``, not ``torch.nnx``). Under them a target must be a class defined under
#: one of them, or a function in :data:`VETTED_BUILDERS` / marked with :func:`config_builder`.
ALLOWED_PREFIXES: tuple[str, ...] = (
    "detres", "torch.nn", "torch.optim", "torch.amp", "torchvision.ops", "torchvision.models", "timm")

#: Functions of third-party packages that a config may call by dotted path (they build a model).
VETTED_BUILDERS: frozenset[str] = frozenset({"timm.create_model", "timm.models.create_model",
                                             "torchvision.models.get_model"})

#: Top-level packages governed by the allow-list: listing one in ``custom_imports`` imports it but
#: trusts nothing more (else ``custom_imports: [torch]`` would allow ``torch.load``).
_GOVERNED_ROOTS = frozenset({"detres", "torch", "torchvision", "timm"})

_trusted_modules: set[str] = set()
_builtins_loaded = False


class TargetNotAllowedError(KeyError):
    """A ``_target_`` that a config may not name (it could run arbitrary code)."""


def config_builder(fn: Any) -> Any:
    """Mark a detres function as one a config may name by dotted path (e.g. ``train.train_loader``)."""
    fn.__detres_config_builder__ = True
    return fn


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in BUILTIN_PACKAGES:
            importlib.import_module(mod)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def trusted_modules() -> list[str]:
    """Modules trusted through ``custom_imports`` / ``--import`` in this process, sorted."""
    return sorted(_trusted_modules)


def import_modules(modules: Iterable[str]) -> None:
    """Import a user's modules so that their ``@X.register()`` decorators run, and trust them: a config
    may then name their classes and functions by dotted path. Standard-library modules are refused
    (``custom_imports: [os]`` would allow ``os.system``)."""
    import sys

    for mod in modules:
        if not isinstance(mod, str) or not mod or mod.startswith(".") or any(
                p.startswith("__") for p in mod.split(".")):
            raise ImportError(f"custom import {mod!r}: expected a module path such as my_pkg.nets.")
        root = mod.split(".")[0]
        if root in sys.stdlib_module_names or root == "builtins":
            raise ImportError(
                f"custom import '{mod}' is refused: a standard-library module is not a user's module, and "
                "trusting it would let a config call its functions. List your own package instead.")
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ImportError(
                f"custom import '{mod}' failed: {e}. Check the module path and that it is on PYTHONPATH."
            ) from e
        if root not in _GOVERNED_ROOTS:
            _trusted_modules.add(mod)


def _all_registered() -> dict[str, Any]:
    _load_builtins()
    out: dict[str, Any] = {}
    for reg in ALL_REGISTRIES:
        out.update(reg._obj)
    return out


def _allow_hint(target: str) -> str:
    root = target.rsplit(".", 1)[0]
    return (f" A config may name registered classes (`detres list`), classes under "
            f"{', '.join(ALLOWED_PREFIXES)}, and classes or functions of modules it trusts through "
            f"`custom_imports: [{root}]` (or `--import {root}`) -- list your own module there to allow it "
            "(docs/config.md, 'What a config may do').")


def _check_allowed(target: str, obj: Any, trusted_root: str | None) -> None:
    """Raise TargetNotAllowedError unless ``obj`` (resolved from ``target``) may be built from a config."""
    if trusted_root is not None:  # a user's module: what it defines, not what it imported
        origin = getattr(obj, "__module__", None) or ""
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and _under(origin, trusted_root):
            return
        raise TargetNotAllowedError(
            f"_target_ '{target}' is not a class or function defined in the trusted module '{trusted_root}' "
            f"(it is {_describe(obj)})." + _allow_hint(target))
    origin = getattr(obj, "__module__", None) or ""
    defined_here = any(_under(origin, p) for p in ALLOWED_PREFIXES)
    if inspect.isclass(obj) and defined_here:
        return
    if callable(obj) and (target in VETTED_BUILDERS or (
            defined_here and getattr(obj, "__detres_config_builder__", False) is True)):
        return
    if callable(obj) and _under(target, "torchvision.models") and _torchvision_builder(obj):
        return
    raise TargetNotAllowedError(
        f"_target_ '{target}' is refused: it is {_describe(obj)}, not a class or a vetted builder, and a config "
        "must not be able to run arbitrary code." + _allow_hint(target))


def _torchvision_builder(obj: Any) -> bool:
    """Whether ``obj`` is one of torchvision's registered model builders (``resnet50``, ...)."""
    try:
        from torchvision import models

        return any(models.get_model_builder(n) is obj for n in models.list_models())
    except Exception:  # an old torchvision without the model registry
        return False


def _describe(obj: Any) -> str:
    kind = "a class" if inspect.isclass(obj) else "a module" if inspect.ismodule(obj) else (
        "a function" if callable(obj) else f"a {type(obj).__name__}")
    where = getattr(obj, "__module__", None) or getattr(obj, "__name__", None)
    return f"{kind} from '{where}'" if where else kind


def locate(target: str) -> Any:
    """Resolve a ``_target_`` to the class (or vetted builder) a config may build.

    Allowed: a registered short name; a dotted path under :data:`ALLOWED_PREFIXES` naming a class
    defined there or a vetted builder; a dotted path under a module trusted by ``custom_imports`` /
    ``--import`` naming a class or function defined in it. Anything else raises
    :class:`TargetNotAllowedError` (a KeyError) before any module of the path is imported.
    """
    if not isinstance(target, str) or not target:
        raise KeyError(f"_target_ must be a non-empty string, got {target!r}.")
    if "." not in target:
        registered = _all_registered()
        if target in registered:
            return registered[target]
        hint = close_matches(target, registered)
        raise KeyError(
            f"_target_ '{target}' is not registered" + (f"; did you mean {', '.join(hint)}?" if hint else ".")
            + " Use a registered name (`detres list`) or a full dotted path (my_pkg.module.Class), and list "
            "your module in `custom_imports`.")
    parts = target.split(".")
    if any(not p.isidentifier() or p.startswith("__") for p in parts):
        raise TargetNotAllowedError(f"_target_ '{target}' is refused: dunder or malformed path components."
                                    + _allow_hint(target))
    trusted = next((m for m in sorted(_trusted_modules, key=len, reverse=True) if _under(target, m)), None)
    if trusted is None and not any(_under(target, p) for p in ALLOWED_PREFIXES):
        raise TargetNotAllowedError(
            f"_target_ '{target}' is refused: it is neither a registered name nor under an allowed package."
            + _allow_hint(target))
    obj: Any = None
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            obj = None
        break
    if obj is None:
        raise KeyError(
            f"_target_ '{target}' is not importable. Use a registered name (`detres list`) or a full dotted "
            "path (my_pkg.module.Class), and list your module in `custom_imports`.")
    _check_allowed(target, obj, trusted)
    return obj


def instantiate(node: Any, **injected: Any) -> Any:
    """Build a config node.

    Mappings with ``_target_`` become objects: a class with a ``from_config`` classmethod gets the
    node's other keys (children still as plain data, so it can pass shapes down); anything else gets
    its children built first. ``injected`` keyword arguments (e.g. ``input_shape``) are added.
    Lists are built element-wise; other values are returned as they are. Every ``_target_`` of the
    node is checked (:func:`locate`) before anything is built.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    check_targets(node)
    return _build(node, injected)


def check_targets(node: Any, path: str = "") -> None:
    """Resolve every ``_target_`` in a plain node tree (raises naming the key path of a refused one)."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{path}[{i}]")
    elif isinstance(node, Mapping):
        if "_target_" in node:
            try:
                locate(node["_target_"])
            except KeyError as e:
                where = f"{path}._target_" if path else "_target_"
                raise type(e)(f"{where}: {e.args[0]}") from None
        for k, v in node.items():
            if k != "_target_":
                check_targets(v, f"{path}.{k}" if path else str(k))


def _build(node: Any, injected: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_build(v, {}) for v in node]
    if not isinstance(node, Mapping) or "_target_" not in node:
        if isinstance(node, Mapping):
            return {k: _build(v, {}) for k, v in node.items()}
        return node
    target = locate(node["_target_"])
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    kwargs.update(injected)
    builder: Callable[..., Any]
    if inspect.isclass(target) and "from_config" in target.__dict__:
        builder = target.from_config
    else:
        builder = target
        kwargs = {k: (v if k in injected else _build(v, {})) for k, v in kwargs.items()}
    try:
        return builder(**kwargs)
    except TypeError as e:
        raise TypeError(f"building '{node['_target_']}' failed: {e}") from e
