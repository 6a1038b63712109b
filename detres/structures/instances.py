"""Instances (the boxes of one image) and Sample (one dataset item)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Instances:
    """Ground-truth boxes of one image.

    boxes: [N, 4] float32 absolute xyxy in the image's pixels.
    labels: [N] int64 contiguous 0..K-1.
    iscrowd: [N] bool; crowd boxes are ignore regions, never positives.
    """

    boxes: Tensor
    labels: Tensor
    iscrowd: Tensor | None = None

    def __post_init__(self) -> None:
        if self.iscrowd is None:
            self.iscrowd = torch.zeros(len(self.labels), dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def empty() -> "Instances":
        """No boxes."""
        return Instances(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64))

    def to(self, device: torch.device | str) -> "Instances":
        """The same instances on ``device``."""
        return Instances(self.boxes.to(device), self.labels.to(device), self.iscrowd.to(device))

    def __getitem__(self, idx: Tensor | slice) -> "Instances":
        return Instances(self.boxes[idx], self.labels[idx], self.iscrowd[idx])

    def to_target(self) -> dict[str, Tensor]:
        """The detector target dict: {"boxes", "labels", "iscrowd"}."""
        return {"boxes": self.boxes, "labels": self.labels, "iscrowd": self.iscrowd}


@dataclass
class Sample:
    """One dataset item after transforms.

    image: [3, H, W] uint8 RGB. instances: boxes in that (transformed) image's pixels.
    orig_size: (h, w) of the file on disk; evaluation maps boxes back to it.
    """

    image: Tensor
    instances: Instances
    image_id: int
    orig_size: tuple[int, int]
    file_name: str = ""
    meta: dict = field(default_factory=dict)
