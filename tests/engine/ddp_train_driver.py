"""``tools/train.py`` as torchrun launches it, with one change for the equivalence test: the balanced
sampler takes the first positives / negatives by index instead of a random subset.

Faster R-CNN samples anchors and proposals with ``torch.randperm``; two processes draw from two RNG
streams and one process from one, so no data-parallel implementation can give one process's random
choices. With the choice made deterministic, the only differences left are float summation order.
"""
from __future__ import annotations

import sys

import torch
from torch import Tensor

from detres.cli.train import main
from detres.modeling.layers import sampler


def first_balanced(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int) -> tuple[Tensor, Tensor]:
    """``sample_balanced`` without the randomness: the lowest indices of each kind."""
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    return positive[:num_pos], negative[:num_neg]


if __name__ == "__main__":
    torch.set_num_threads(1)
    sampler.sample_balanced = first_balanced
    sys.exit(main(sys.argv[1:]))
