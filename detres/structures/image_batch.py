"""ImageBatch: normalized, zero-padded images plus their sizes before padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageBatch:
    """A padded batch.

    tensor: [B, 3, H, W] normalized, zero-padded at the bottom/right.
    image_sizes: (h, w) of each image before padding (after any test-time resize).
    pad_mask: [B, H, W] bool, True on padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    pad_mask: Tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def to(self, device: torch.device | str) -> "ImageBatch":
        """The same batch on ``device``."""
        return ImageBatch(self.tensor.to(device), list(self.image_sizes), self.pad_mask.to(device))

    @staticmethod
    def from_tensors(
        tensors: list[Tensor], size_divisibility: int = 1, pad_to: tuple[int, int] | None = None
    ) -> "ImageBatch":
        """Pad [3, h_i, w_i] tensors to one [B, 3, H, W] batch.

        H, W are the batch maximum (or ``pad_to``) rounded up to ``size_divisibility``.
        """
        if not tensors:
            raise ValueError("ImageBatch.from_tensors needs at least one image")
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in sizes) if pad_to is None else pad_to[0]
        max_w = max(s[1] for s in sizes) if pad_to is None else pad_to[1]
        if size_divisibility > 1:
            d = size_divisibility
            max_h, max_w = (max_h + d - 1) // d * d, (max_w + d - 1) // d * d
        first = tensors[0]
        out = first.new_zeros((len(tensors), first.shape[0], max_h, max_w))
        mask = torch.ones((len(tensors), max_h, max_w), dtype=torch.bool, device=first.device)
        for i, (t, (h, w)) in enumerate(zip(tensors, sizes)):
            out[i, :, :h, :w].copy_(t)
            mask[i, :h, :w] = False
        return ImageBatch(out, sizes, mask)
