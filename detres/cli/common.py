"""Argument helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from omegaconf import DictConfig


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config C``, ``--import M`` (repeatable) and trailing ``key=value`` overrides."""
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module first so its registrations run (repeatable)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. train.max_iter=100)")


def load_config_from_args(args: argparse.Namespace) -> DictConfig:
    """Import ``--import`` modules, then load the config with the overrides."""
    from detres.config import load_config
    from detres.registry import import_modules

    import_modules(args.imports)
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[list[str] | None], int]) -> None:
    """Run a tool's main as a script, turning user errors into one clear line and exit code 2."""
    from detres.config import ConfigError

    try:
        sys.exit(main(None))
    except (ConfigError, FileNotFoundError, KeyError, ValueError, TypeError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
