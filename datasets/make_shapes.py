#!/usr/bin/env python
"""Synthetic shapes dataset: ``python datasets/make_shapes.py --out DIR --num-train N --num-val M [--seed S]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.make_shapes import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
