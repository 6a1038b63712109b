"""``detres list``: every registry and what is registered in it."""
from __future__ import annotations

import argparse

from detres.cli.common import plain_text
from detres.registry import ALL_REGISTRIES, import_modules


def main(argv: list[str] | None = None) -> int:
    """Print each registry's names, one registry per block."""
    parser = argparse.ArgumentParser(prog="detres list", description=plain_text(__doc__))
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    args = parser.parse_args(argv)
    import_modules(args.imports)
    for reg in ALL_REGISTRIES:
        print(f"{reg.name}:")
        for name in reg.list():
            print(f"  {name}")
    return 0
