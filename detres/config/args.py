"""Command-line arguments every config-driven tool shares, and loading a config from them.

They live here, below ``cli`` and ``benchmark``, so that both can use them without importing each other.
"""
from __future__ import annotations

import argparse

from omegaconf import DictConfig

from detres.config.loader import load_config
from detres.registry import import_modules

__all__ = ["add_config_args", "load_config_from_args"]


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config C``, ``--import M`` (repeatable) and trailing ``key=value`` overrides."""
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module first so its registrations run (repeatable)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. train.max_iter=100)")


def load_config_from_args(args: argparse.Namespace) -> DictConfig:
    """Import ``args.imports`` modules, then load ``args.config`` with ``args.overrides``."""
    import_modules(args.imports)
    return load_config(args.config, args.overrides)
