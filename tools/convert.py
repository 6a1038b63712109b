#!/usr/bin/env python
"""Convert a reference checkpoint: ``python tools/convert.py --from {torchvision,detectron2,detr,deformable_detr,dino,rtdetr} SRC (DST | --out DIR)``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
