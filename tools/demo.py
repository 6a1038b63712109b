#!/usr/bin/env python
"""Draw detections: ``python tools/demo.py --config C --weights W --input IMG|DIR|VIDEO --out DIR``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
