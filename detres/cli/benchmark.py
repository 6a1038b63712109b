"""``detres benchmark {model,train,data,eval,deform-attn} ... [--json]``: speed and memory, side by side with references."""
from __future__ import annotations

import argparse
import importlib
import json

from detres.cli.common import plain_text

#: mode -> module with ``add_args(parser)`` and ``run(args) -> dict``.
MODES = {
    "model": "detres.benchmark.model",
    "train": "detres.benchmark.train",
    "data": "detres.benchmark.data",
    "eval": "detres.benchmark.eval",
    "deform-attn": "detres.benchmark.deform_attn",
}


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark mode; ``--json`` prints its result as one JSON object."""
    parser = argparse.ArgumentParser(prog="detres benchmark", description=plain_text(__doc__))
    sub = parser.add_subparsers(dest="mode", required=True)
    modules = {}
    for mode, modname in MODES.items():
        try:
            modules[mode] = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue
        p = sub.add_parser(mode, help=plain_text(modules[mode].__doc__).strip().splitlines()[0])
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        modules[mode].add_args(p)
    args = parser.parse_args(argv)
    result = modules[args.mode].run(args)
    if args.json:
        print(json.dumps(result, default=float))
    return 0
