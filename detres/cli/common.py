"""Running a tool's ``main`` as a script (config arguments: ``detres.config.args``)."""
from __future__ import annotations

import sys
from collections.abc import Callable

#: Exit code of a user error (config typo, missing or unreadable file): one line, no traceback.
USER_ERROR = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types a tool reports as one ``error:`` line with exit code 2."""
    from detres.config import ConfigError
    from detres.data.io import ImageReadError

    return (ConfigError, FileNotFoundError, KeyError, ValueError, TypeError, ImportError, ImageReadError)


def user_error_message(e: BaseException) -> str:
    """The one line to print for ``e``: a KeyError's bare text; for an error re-raised by a DataLoader
    worker (its message carries the worker's traceback), the original error's own last line."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(("Error", "Exception")) else last
    return msg


def run_main(main: Callable[[list[str] | None], int]) -> None:
    """Run a tool's main as a script, turning user errors into one clear line and exit code 2.

    The error types are imported only when an exception reaches here, so a tool that needs no torch
    (scoring a results file) imports none."""
    try:
        code = main(None)
    except Exception as e:  # not SystemExit / KeyboardInterrupt: those pass through as they are
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        sys.exit(USER_ERROR)
    sys.exit(code)


def plain_text(doc: str | None) -> str:
    """A module docstring as a ``--help`` description: reStructuredText's double backquotes removed."""
    return (doc or "").replace("``", "")
