#!/usr/bin/env python
"""Benchmarks: ``python tools/benchmark.py {model,train,data,eval,deform-attn} ... [--json]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.benchmark import main  # noqa: E402
from detres.cli.common import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
