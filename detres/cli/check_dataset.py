"""``detres check-dataset --ann A.json --images DIR``: list every problem with its id (exit 0 clean,
1 problems found, 2 could not run), a per-category count table and a box-size histogram."""
from __future__ import annotations

import argparse
import sys

from detres.cli.common import plain_text


def main(argv: list[str] | None = None) -> int:
    """Check a COCO json and its image folder."""
    parser = argparse.ArgumentParser(prog="detres check-dataset", description=plain_text(__doc__))
    parser.add_argument("--ann", required=True, help="COCO-format annotation json")
    parser.add_argument("--images", default=None, help="image folder (file_name is relative to it); omit to skip images")
    parser.add_argument("--decode", action="store_true", help="fully decode every image (slow) instead of header checks")
    parser.add_argument("--strict", action="store_true", help="warnings count as problems too")
    parser.add_argument("--max-print", type=int, default=50, help="print at most this many lines per kind")
    args = parser.parse_args(argv)
    from detres.data.check import check_coco

    try:
        rep = check_coco(args.ann, args.images, decode=args.decode)
    except (OSError, ValueError) as e:
        print(f"error: cannot check {args.ann}: {e}", file=sys.stderr)
        return 2
    for kind, items in (("ERROR", rep.errors), ("WARNING", rep.warnings)):
        for line in items[: args.max_print]:
            print(f"{kind}: {line}")
        if len(items) > args.max_print:
            print(f"{kind}: ... and {len(items) - args.max_print} more")
    for t in rep.tables:
        print(t)
    bad = bool(rep.errors) or (args.strict and bool(rep.warnings))
    print(f"{len(rep.errors)} errors, {len(rep.warnings)} warnings: " + ("problems found" if bad else "clean"))
    return 1 if bad else 0
