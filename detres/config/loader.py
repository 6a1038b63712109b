"""``load_config``: YAML + ``_base_`` inheritance + dotlist overrides, validated before any work."""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detres.config import schema as schema_mod
from detres.config.validate import (
    ConfigError, accepted_keys, class_table, dataclass_fields_of, moved_key_error, validate_node, validate_schema,
)
from detres.registry import close_matches, import_modules, instantiate, locate


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}. Check the path (relative to the working directory).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}.")
    return data


def _load_tree(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    """``path`` merged over its ``_base_`` parents (each merged over its own first, to any depth);
    ``chain`` holds the files being loaded above it, so that a cycle is refused."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}. Remove the _base_ entry that points back to {path.name}.")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: _base_ entry '{base}' not found (looked at {base_path}).")
        merged = OmegaConf.merge(merged, _load_tree(base_path, (*chain, path)))
    _apply_deletes(merged, data)
    return OmegaConf.merge(merged, OmegaConf.create(data))


def _apply_deletes(base: DictConfig, child: dict[str, Any]) -> None:
    # A child node that switches `_target_` replaces the parent's node instead of merging into it,
    # so keys of the old class do not leak into the new one.
    for key, value in child.items():
        if not isinstance(value, dict) or key not in base or not isinstance(base[key], DictConfig):
            continue
        if "_target_" in value and base[key].get("_target_") not in (None, value["_target_"]):
            base[key] = OmegaConf.create({})
        else:
            _apply_deletes(base[key], value)


def _parse_override(item: str) -> tuple[str, Any, bool]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. model.backbone.depth=101).")
    key, raw = item.split("=", 1)
    force = key.startswith("+")
    key = key.lstrip("+").strip()
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key, value, force


def _node_tables(node: Any) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """(accepted keys, moved keys, injects) of a ``_target_`` node ([], {}, {} when unknown)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return [], {}, {}
    try:
        target = locate(node["_target_"])
    except KeyError:
        return [], {}, {}
    return accepted_keys(node["_target_"]), class_table(target, "moved_keys"), class_table(target, "injects")


def _check_override_key(cfg: DictConfig, key: str) -> None:
    parts = key.split(".")
    node: Any = cfg
    path: list[str] = []
    injected: tuple[str, ...] = ()
    fields: list[str] = []  # keys of a dataclass-typed argument (a detector's `input:` block)
    for i, part in enumerate(parts):
        is_last = i == len(parts) - 1
        accepted, moved, injects = _node_tables(node)
        where = ".".join(path) or "<top level>"
        if part in injected:
            raise ConfigError(
                f"override '{key}': '{part}' is passed in by {'.'.join(path[:-1]) or 'the parent'} (shapes flow "
                f"from the backbone); {where} does not take it from the config."
            )
        if isinstance(node, DictConfig) and part in node:
            fields = dataclass_fields_of(node["_target_"], part) if accepted else []
            node = node[part]
            path.append(part)
            injected = tuple(injects.get(part, ()))
            continue
        if part in moved:
            raise moved_key_error(".".join(path), part, moved[part])
        valid: list[str] = list(node.keys()) if isinstance(node, DictConfig) else []
        if accepted:
            valid = sorted(set(valid) | set(accepted))
        elif fields:
            valid = sorted(set(valid) | set(fields))
        elif not path:
            valid = sorted(set(valid) | set(schema_mod.TOP_LEVEL))
        elif len(path) == 1 and schema_mod.TOP_LEVEL.get(path[0]) is not None:
            import dataclasses

            valid = sorted(set(valid) | {f.name for f in dataclasses.fields(schema_mod.TOP_LEVEL[path[0]])})
        valid = [v for v in valid if v not in injected]
        if is_last and part in valid:
            return
        hint = close_matches(part, valid)
        raise ConfigError(
            f"override '{key}': no key '{part}' under {where}"
            + (f"; did you mean {'.'.join([*path, hint[0]])}?" if hint else ".")
            + (f" Valid keys there: {', '.join(valid)}." if valid else "")
            + " Prefix with '+' to add a new key on purpose."
        )


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Merge ``key=value`` dotlist overrides, rejecting unknown keys with the nearest valid names."""
    for item in overrides:
        key, value, force = _parse_override(item)
        if not force:
            _check_override_key(cfg, key)
        old = OmegaConf.select(cfg, key, default=None)
        # A node with another `_target_` replaces the old one (as in `_base_` merging), so keys of
        # the old class do not leak into the new one.
        switch = isinstance(value, dict) and isinstance(old, DictConfig) and old.get("_target_") not in (None, value.get("_target_"))
        OmegaConf.update(cfg, key, value, merge=not switch, force_add=True)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Resolve interpolations and check every section; raises ConfigError naming the key."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config interpolation failed at '{e.full_key}': {e.msg}") from None
    assert isinstance(data, Mapping)
    # Plain sections first: a bad `train.max_iter=abc` is then reported under the key typed, not under
    # a node that interpolates it (`lr_scheduler.max_iters: ${train.max_iter}`).
    order = sorted(data, key=lambda k: schema_mod.TOP_LEVEL.get(k) is None)
    for key in order:
        value = data[key]
        if key not in schema_mod.TOP_LEVEL:
            hint = close_matches(str(key), schema_mod.TOP_LEVEL)
            raise ConfigError(
                f"{key}: unknown top-level key" + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                + f" Valid: {', '.join(schema_mod.TOP_LEVEL)}."
            )
        sch = schema_mod.TOP_LEVEL[key]
        if sch is not None and isinstance(value, Mapping):
            validate_schema(value, sch, key)
        else:
            validate_node(value, key)
    loader = (data.get("train") or {}).get("train_loader") if isinstance(data.get("train"), Mapping) else None
    if loader:  # a dotted path the trainer calls: the same rules as a `_target_`
        try:
            locate(loader)
        except KeyError as e:
            raise ConfigError(f"train.train_loader: {e.args[0]}") from None


def load_config(path: str | os.PathLike, overrides: Sequence[str] | None = None) -> DictConfig:
    """Load a YAML config with its ``_base_`` parents, apply overrides, import ``custom_imports``
    and validate everything. Returns an OmegaConf DictConfig (interpolations kept)."""
    cfg = _load_tree(Path(path), ())
    for section, sch in schema_mod.TOP_LEVEL.items():
        if sch is not None and section in cfg:
            defaults = OmegaConf.structured(sch)
            cfg[section] = OmegaConf.merge(OmegaConf.to_container(defaults), cfg[section])
        elif sch is not None:
            cfg[section] = OmegaConf.to_container(OmegaConf.structured(sch))
    imports = list(cfg.get("custom_imports", None) or [])
    if imports:
        import_modules(imports)
    apply_overrides(cfg, overrides or [])
    extra = [m for m in (cfg.get("custom_imports", None) or []) if m not in imports]
    if extra:
        import_modules(extra)
    resolve_auto_num_classes(cfg)
    validate_config(cfg)
    return cfg


def infer_num_classes(data_cfg: Any) -> tuple[int, list[str]]:
    """(K, class names) of ``data_cfg.train`` (else ``data_cfg.val``) from its annotation file,
    without decoding images.

    The dataset class names its classes through a ``read_meta(**node)`` static method (returning an
    object with ``num_classes`` and ``class_names``); a class without one is built (no transforms) and
    its ``.meta`` read. The class comes from the registry, so this layer needs no dataset code.
    """
    node = _cfg_get(data_cfg, "train") or _cfg_get(data_cfg, "val")
    if not node:
        raise ValueError("num_classes: auto needs data.train or data.val to read the classes from.")
    node = dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    target = locate(node.pop("_target_"))
    if hasattr(target, "read_meta"):
        meta = target.read_meta(**node)
    else:
        kwargs = {"filter_empty": False} if "filter_empty" in inspect.signature(target).parameters else {}
        meta = instantiate({"_target_": f"{target.__module__}.{target.__qualname__}", **node},
                           transforms=None, **kwargs).meta
    return meta.num_classes, list(meta.class_names)


def _cfg_get(cfg: Any, key: str) -> Any:
    return cfg.get(key, None) if isinstance(cfg, (Mapping, DictConfig)) else getattr(cfg, key, None)


def resolve_auto_num_classes(cfg: DictConfig) -> None:
    """``num_classes: auto`` takes the class count and names from the dataset's annotation file.

    ``class_names`` always come from the dataset then: names inherited from a ``_base_`` config (COCO's 80,
    the shapes example's 3) would otherwise label the new dataset's classes wrongly in the saved config.
    """
    if cfg.get("num_classes", None) != "auto":
        return
    if not cfg.get("data", None) or not (cfg.data.get("train", None) or cfg.data.get("val", None)):
        raise ConfigError("num_classes: auto needs data.train or data.val to read the categories from.")
    num, names = infer_num_classes(cfg.data)
    cfg.num_classes = num
    cfg.class_names = list(names)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
