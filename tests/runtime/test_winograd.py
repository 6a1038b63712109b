"""Winograd F(4x4, 3x3) as GEMMs (``detres.runtime.winograd``) against the direct convolution."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detres.runtime.winograd import f43_conv2d, f43_filter


@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_f43_conv2d_equals_conv2d(padding: tuple[int, int], channels_last: bool) -> None:
    """Winograd F(4x4, 3x3) as GEMMs: any padding, sizes that are not whole tiles, several images and
    bands of tiles; within float32 Winograd rounding of a float64 reference, output channels-last."""
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 24, 17, 23), torch.randn(40, 24, 3, 3) / 15, torch.randn(40)
    ref = nn.functional.conv2d(x.double(), w.double(), b.double(), padding=padding)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for tile_bytes in (1, 1 << 12, 6 << 20):  # one tile row per band, a few rows, the whole map
        out = f43_conv2d(x, f43_filter(w), b, padding, tile_bytes=tile_bytes)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert float((out - ref).abs().max() / ref.abs().max()) < 2e-5
    no_bias = f43_conv2d(x, f43_filter(w), None, padding)
    assert float((no_bias + b[:, None, None] - ref).abs().max() / ref.abs().max()) < 2e-5


def test_f43_filter_is_g_w_gt() -> None:
    """[K, C, 3, 3] -> [36, C, K]: a delta filter at the centre transforms to G's middle column outer itself."""
    w = torch.zeros(2, 3, 3, 3)
    w[1, 2, 1, 1] = 1.0
    u = f43_filter(w)
    assert u.shape == (36, 3, 2) and u.dtype == torch.float32
    g_mid = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0])
    torch.testing.assert_close(u[:, 2, 1], torch.outer(g_mid, g_mid).flatten())
    assert u[:, :2].abs().sum() == 0 and u[:, 2, 0].abs().sum() == 0
