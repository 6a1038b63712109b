"""Winograd F(4x4, 3x3) as plain PyTorch GEMMs (Lavin & Gray 2016, "Fast Algorithms for Convolutional
Neural Networks").

A 3x3 convolution over a 6x6 input tile gives a 4x4 output tile; Winograd's minimal filtering computes it
with 36 multiplications per (input, output) channel pair instead of 144. Over all tiles that is one
batched GEMM, 36 x [tiles, C] @ [C, K], between two small linear transforms of the tiles:

    V = B^T d B   (every 6x6 input tile d, per input channel)
    U = G g G^T   (every 3x3 filter g, once per weight: ``f43_filter``)
    M = V U       (per tile element: [tiles, C] @ [C, K])
    Y = A^T M A   (every 6x6 product tile -> 4x4 outputs)

Every step is a GEMM or a copy that PyTorch threads with its own pool (OpenMP), so the convolution shares
the threads of the ops around it; NNPACK's kernels use a second pool, which on a machine with few cores
fights the first one's spinning workers (measured in docs/benchmarks.md). The tiles are processed in bands
of tile rows whose transformed data fits ``tile_bytes``, so the intermediates stay in cache on large maps.
Float32 transforms: relative error about 1e-5 of the output's scale (direct convolution: about 1e-6).
"""
from __future__ import annotations

import torch

_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
B_T = torch.tensor(_BT, dtype=torch.float32)
A_T = torch.tensor(_AT, dtype=torch.float32)

TILE = 4  # output pixels per tile side
WINDOW = TILE + 2  # input pixels per tile side


@torch.no_grad()
def f43_filter(weight: torch.Tensor) -> torch.Tensor:
    """[K, C, 3, 3] filters -> [36, C, K] transformed filters ``G g G^T``, computed in float64 and
    rounded once to ``weight``'s dtype."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(WINDOW * WINDOW, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def f43_conv2d(x: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
               tile_bytes: int = 6 << 20) -> torch.Tensor:
    """``F.conv2d(x, w, bias, stride=1, padding=padding)`` for a 3x3 ``w`` given as ``filt = f43_filter(w)``.

    ``x`` is [B, C, H, W] in any memory format; the output is channels-last [B, K, Ho, Wo]. CPU float32
    inference (no autograd through the transforms is intended, though every op has one).
    """
    b, c, h, w = x.shape
    k = filt.shape[2]
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // TILE), -(-wo // TILE)
    hp, wp = TILE * th + 2, TILE * tw + 2
    padded = x.new_zeros((b, hp, wp, c))  # NHWC, zero border, room for whole tiles
    padded[:, ph:ph + h, pw:pw + w].copy_(x.permute(0, 2, 3, 1))
    out = x.new_empty((b, TILE * th, TILE * tw, k))
    bt, at = B_T.to(x.dtype), A_T.to(x.dtype)
    rows = max(1, tile_bytes // (tw * WINDOW * WINDOW * max(c, k) * x.element_size()))
    for i in range(b):
        for r0 in range(0, th, rows):
            r = min(rows, th - r0)
            n = r * tw * c
            # The band's 6x6 windows (stride 4), tile element first: [6, 6, r, tw, C].
            windows = padded.as_strided(
                (WINDOW, WINDOW, r, tw, c), (wp * c, c, TILE * wp * c, TILE * c, 1),
                padded.storage_offset() + (i * hp + TILE * r0) * wp * c,
            ).contiguous()
            v = torch.matmul(bt, (bt @ windows.view(WINDOW, WINDOW * n)).view(WINDOW, WINDOW, n))  # B^T d B
            m = torch.bmm(v.view(WINDOW * WINDOW, r * tw, c), filt)  # [36, tiles, K]
            y = torch.matmul(at, (at @ m.view(WINDOW, -1)).view(TILE, WINDOW, -1))  # A^T M A: [4, 4, tiles*K]
            y = y.view(TILE, TILE, r, tw, k)
            if bias is not None:
                y.add_(bias)
            out[i, TILE * r0:TILE * (r0 + r)].view(r, TILE, tw, TILE, k).copy_(y.permute(2, 0, 3, 1, 4))
    if (ho, wo) != tuple(out.shape[1:3]):
        out = out[:, :ho, :wo].contiguous()
    return out.permute(0, 3, 1, 2)
