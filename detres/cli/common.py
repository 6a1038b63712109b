"""Running a tool's ``main`` as a script (config arguments: ``detres.config.args``)."""
from __future__ import annotations

import sys
from collections.abc import Callable


def run_main(main: Callable[[list[str] | None], int]) -> None:
    """Run a tool's main as a script, turning user errors into one clear line and exit code 2.

    (``detres.config.ConfigError`` is a ValueError: caught without importing the config system.)
    """
    try:
        sys.exit(main(None))
    except (FileNotFoundError, KeyError, ValueError, TypeError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
