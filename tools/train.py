#!/usr/bin/env python
"""Train a detector: ``python tools/train.py --config C [--resume [PATH]] [--eval-only --weights W] [key=value ...]``
(several processes: ``torchrun --nproc_per_node N tools/train.py ...``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detres.cli.common import run_main  # noqa: E402
from detres.cli.train import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
