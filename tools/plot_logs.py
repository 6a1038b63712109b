#!/usr/bin/env python
"""Loss and AP curves: ``python tools/plot_logs.py --logs output/metrics.jsonl --out curves.png``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.plot_logs import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
