#!/usr/bin/env python
"""Export to ONNX and torch.export with a parity check: ``python tools/export.py --config C --out DIR [key=value ...]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.export import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
