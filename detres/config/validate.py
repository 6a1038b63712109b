"""Check a resolved config against constructor signatures and section schemas, before any work.

Every error names the key path at fault and, for unknown names, the nearest valid ones.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from detres.registry import close_matches, locate

#: Constructor arguments that builders pass in themselves; configs never write them. A parent
#: node's class declares what it passes into each child node in ``injects: ClassVar[dict[str,
#: tuple[str, ...]]]`` (child key -> argument names), e.g. ``StandardROIHeads.injects["box_head"] ==
#: ("channels", "resolution")``: such a child may omit them and may not write them.
INJECTED_ARGS: set[str] = {"input_shape", "params", "optimizer", "transforms"}


class ConfigError(ValueError):
    """A config that cannot be built; the message names the key path and the fix."""


def _builder(target: Any) -> Any:
    """``from_config`` when the class defines one (the function ``instantiate`` calls), else ``target``."""
    fn = target.__dict__["from_config"] if inspect.isclass(target) and "from_config" in target.__dict__ else target
    return fn.__func__ if isinstance(fn, classmethod) else fn


def _forwards_to_init(target: Any) -> bool:
    """A ``from_config(**kwargs)`` hands its extra keys to ``__init__``, so those are accepted too."""
    fn = _builder(target)
    if fn is target or not inspect.isclass(target):
        return False
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def _own_params(fn: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, True
    params = {
        n: p for n, p in sig.parameters.items()
        if n not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,)
    }
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return {n: p for n, p in params.items() if p.kind != p.VAR_KEYWORD}, has_var_kw


def _signature_params(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """(accepted arguments by name, whether any other name is accepted too) of a node's target.

    For a class with ``from_config(..., **kwargs)`` that forwards to ``__init__``, the arguments of both
    (``from_config``'s first: it receives the child nodes, ``__init__`` the built modules).
    """
    params, has_var_kw = _own_params(_builder(target))
    if _forwards_to_init(target):
        init_params, has_var_kw = _own_params(target.__init__)
        params = {**init_params, **params}
    return params, has_var_kw


def class_table(target: Any, attr: str) -> dict[str, Any]:
    """A class-level mapping such as ``moved_keys`` or ``injects`` of a node's target ({} if none)."""
    table = getattr(target, attr, None) if inspect.isclass(target) else None
    return dict(table) if isinstance(table, Mapping) else {}


def moved_key_error(path: str, key: str, new: str) -> ConfigError:
    """The error for a key that a class lists in ``moved_keys`` (``new`` is relative to the node)."""
    where = f"{path}." if path else ""
    return ConfigError(
        f"{where}{key} moved: it is now {where}{new}. Write it there instead (docs/config.md, 'Moved keys')."
    )


def accepted_keys(target_name: str, injected: Collection[str] = ()) -> list[str]:
    """Keys a node with ``_target_: target_name`` accepts (for override checks and hints);
    ``injected`` are the arguments its parent passes in."""
    params, _ = _signature_params(locate(target_name))
    return [n for n in params if n not in INJECTED_ARGS and n not in injected]


def dataclass_fields_of(target_name: str, key: str) -> list[str]:
    """Field names when argument ``key`` of ``target_name`` is a dataclass (e.g. ``input:``), else []."""
    tp = _type_hints(locate(target_name)).get(key)
    return [f.name for f in dataclasses.fields(tp)] if tp is not None and dataclasses.is_dataclass(tp) else []


def _type_hints(target: Any) -> dict[str, Any]:
    fns = [_builder(target)]
    if _forwards_to_init(target):
        fns.insert(0, target.__init__)
    hints: dict[str, Any] = {}
    for fn in fns:
        if inspect.isclass(fn):
            fn = fn.__init__
        try:
            hints.update(typing.get_type_hints(fn))
        except Exception:  # unresolvable annotations: skip type checks, keep name checks
            pass
    return hints


def _matches(value: Any, tp: Any) -> bool:
    """Loose check of a plain config value against a simple annotation; unknown types pass."""
    if value is None:
        return tp is type(None) or tp is Any or _is_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return len(args) != 1 or all(_matches(v, args[0]) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    return True


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def validate_node(node: Any, path: str, injected: Collection[str] = ()) -> None:
    """Validate one ``_target_`` node and its children recursively (plain containers).

    ``injected``: arguments the parent node's class passes into this node (its ``injects`` entry).
    A key that the target class lists in ``moved_keys`` raises an error naming its new place.
    """
    if isinstance(node, list):
        for i, v in enumerate(node):
            validate_node(v, f"{path}[{i}]")
        return
    if not isinstance(node, Mapping):
        return
    if "_target_" not in node:
        for k, v in node.items():
            validate_node(v, f"{path}.{k}" if path else str(k))
        return
    name = node["_target_"]
    try:
        target = locate(name)
    except KeyError as e:
        raise ConfigError(f"{path}._target_: {e.args[0]}") from None
    params, has_var_kw = _signature_params(target)
    hints = _type_hints(target)
    moved, injects = class_table(target, "moved_keys"), class_table(target, "injects")
    valid = [p for p in params if p not in INJECTED_ARGS and p not in injected]
    for key, value in node.items():
        if key == "_target_":
            continue
        child = f"{path}.{key}"
        if key in injected:
            parent = path.rsplit(".", 1)[0] if "." in path else "its parent"
            raise ConfigError(
                f"{child}: '{name}.{key}' is passed in by {parent} (shapes flow from the backbone); "
                f"remove `{key}` from {path}."
            )
        if key not in params and not has_var_kw:
            if key in moved:
                raise moved_key_error(path, key, moved[key])
            hint = close_matches(key, valid)
            raise ConfigError(
                f"{child}: '{name}' has no argument '{key}'"
                + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                + f" Valid keys: {', '.join(valid)}."
            )
        if isinstance(value, Mapping) and "_target_" in value:
            validate_node(value, child, tuple(injects.get(key, ())))
            continue
        if isinstance(value, list):
            validate_node(value, child)
            continue
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            validate_schema(value, tp, child)
        elif tp is not None and not _matches(value, tp):
            raise ConfigError(
                f"{child}: expected {_type_name(tp)} for '{name}.{key}', got {type(value).__name__} "
                f"{value!r}. Fix the value in the config or the override."
            )
        elif isinstance(value, Mapping):
            validate_node(value, child)
    for pname, p in params.items():
        if p.default is p.empty and pname not in node and pname not in INJECTED_ARGS and pname not in injected:
            raise ConfigError(
                f"{path}: missing required key '{pname}' for '{name}'. Add `{pname}: ...` under {path}."
            )


def validate_schema(section: Mapping, schema: Any, path: str) -> None:
    """Check a plain section against a dataclass schema: unknown keys and simple types."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    try:
        hints = typing.get_type_hints(schema)
    except Exception:
        hints = {}
    for key, value in section.items():
        child = f"{path}.{key}"
        removed = getattr(schema, "removed_keys", {})
        if key in removed:
            default, advice = removed[key]
            if value == default:  # an older run folder's saved config: inert, ignored
                continue
            raise ConfigError(f"{child}: no longer a config key (nothing read it): {advice}.")
        if key not in fields:
            hint = close_matches(key, fields)
            raise ConfigError(
                f"{child}: unknown key"
                + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                + f" Valid keys under {path}: {', '.join(fields)}."
            )
        tp = hints.get(key)
        if isinstance(value, (Mapping, list)):
            validate_node(value, child)
        elif tp is not None and not _matches(value, tp):
            raise ConfigError(f"{child}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}.")
    for key, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and key not in section:
            raise ConfigError(f"{path}: missing required key '{key}'.")
