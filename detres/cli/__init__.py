"""``detres <command>``: one console script over every tool."""
from __future__ import annotations

import importlib
import sys

#: subcommand -> module with a ``main(argv)`` function.
COMMANDS = {
    "train": "detres.cli.train",
    "eval": "detres.cli.eval",
    "demo": "detres.cli.demo",
    "benchmark": "detres.cli.benchmark",
    "convert": "detres.cli.convert",
    "export": "detres.cli.export",
    "print-config": "detres.cli.print_config",
    "list": "detres.cli.list_registries",
    "check-dataset": "detres.cli.check_dataset",
    "convert-dataset": "detres.cli.convert_dataset",
    "make-shapes": "detres.cli.make_shapes",
    "plot-logs": "detres.cli.plot_logs",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``detres <command> [args]`` to the command's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: detres <command> [options]\n\ncommands:\n  " + "\n  ".join(COMMANDS))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        from detres.registry import close_matches

        hint = close_matches(cmd, COMMANDS)
        print(f"detres: unknown command '{cmd}'" + (f"; did you mean {hint[0]}?" if hint else ""), file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[cmd])
    except ModuleNotFoundError as e:
        print(f"detres: command '{cmd}' is not available in this build ({e})", file=sys.stderr)
        return 2
    from detres.config import ConfigError

    try:
        return int(module.main(rest) or 0)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, TypeError, ImportError) as e:
        # A user error (config typo, missing file): one clear line, exit code 2, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
