#!/usr/bin/env python
"""COCO evaluation: ``python tools/eval.py --gt A.json --results R.json`` or ``--config C --weights W``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.eval import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
