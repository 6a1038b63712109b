"""The transform protocol: ``t(data: DetData, rng: numpy Generator) -> DetData``; plus Compose and RandomSelect.

Every random choice draws from the ``rng`` passed in, so a (seed, sample) pair fixes the output.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detres.registry import TRANSFORMS

Transform = Callable[["DetData", np.random.Generator], "DetData"]


@dataclass
class DetData:
    """One image and its boxes while transforms run.

    image: [H, W, 3] uint8 RGB. boxes: [N, 4] float32 absolute xyxy. labels: [N] int64.
    iscrowd: [N] bool.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def select(self, keep: np.ndarray) -> "DetData":
        """Keep the boxes where ``keep`` [N] bool is True (image unchanged)."""
        return DetData(self.image, self.boxes[keep], self.labels[keep], self.iscrowd[keep])


@TRANSFORMS.register()
class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        for t in self.transforms:
            data = t(data, rng)
        return data

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


@TRANSFORMS.register()
class RandomSelect:
    """DETR's either-or: apply the ``first`` list with probability ``p``, else the ``second`` list."""

    def __init__(self, first: list, second: list, p: float = 0.5) -> None:
        self.first = Compose(first)
        self.second = Compose(second)
        self.p = float(p)

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        return self.first(data, rng) if rng.random() < self.p else self.second(data, rng)

    def __repr__(self) -> str:
        return f"RandomSelect(p={self.p}, first={self.first}, second={self.second})"
