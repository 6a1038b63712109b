"""Multi-scale deformable attention sampling as one weighted gather of value rows (inference).

The reference op (``detres.modeling.layers.ms_deform_attn.ms_deform_attn_sample``) runs
``F.grid_sample`` per level, materializes every sampled value ``[B*M, D, Q, L*P]`` and then reduces
it with the attention weights. But each bilinear sample is a weighted sum of four value rows, and the
attention output of a (query, head) is a weighted sum of its ``L * P`` samples, so the whole output
row is one weighted sum of ``4 L P`` rows of the ``[B*S*M, D]`` value table (a free view of the
``[B, S, M, D]`` value): ``F.embedding_bag(mode="sum", per_sample_weights=...)`` computes it in one
call without materializing the samples (as ``roi_align_rows`` does for RoIAlign).

Semantics are ``grid_sample``'s with ``mode="bilinear"``, ``padding_mode="zeros"``,
``align_corners=False``: pixel centres at ``(i + 0.5) / size``, a corner outside the map contributes
zero. Inference only: the gradient with respect to the sampling locations is not the reference's
(the corner indices are integers; only the value and weight paths are differentiable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.layers.ms_deform_attn import MSDeformAttn, SpatialShapes

__all__ = ["ms_deform_attn_gather", "GatherMSDeformAttn"]


def _axis(coord: Tensor, size: int, itype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis of a level ``size`` pixels long.

    coord: [...] normalized coordinates (pixel centres at (i + 0.5) / size).
    Returns the low and high pixel indices (clamped into the map, so every read is in bounds) and
    their weights, each zero where its pixel is outside the map (zero padding).
    """
    # grid_sample's own arithmetic: grid = 2 c - 1, then ((grid + 1) * size - 1) / 2 in pixels.
    # Clamped to [-2, size + 1] (where both taps are still outside) so the integer cast cannot overflow.
    pix = (((2 * coord - 1 + 1) * size - 1) / 2).clamp(-2, size + 1)
    low = pix.floor()
    frac = pix - low
    i0 = low.to(itype)
    w0 = (1 - frac) * ((i0 >= 0) & (i0 < size))
    w1 = frac * ((i0 >= -1) & (i0 < size - 1))
    return i0.clamp(0, size - 1), (i0 + 1).clamp(0, size - 1), w0, w1


def ms_deform_attn_gather(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """The reference sampling op as one ``embedding_bag``; same arguments and result.

    value: [B, S, M, D] (S = sum of H_l * W_l tokens, level by level, row-major).
    spatial_shapes: [(H_l, W_l), ...] Python ints (they are constants of a traced graph).
    locations: [B, Q, M, L, P, 2] normalized (x, y); outside [0, 1] samples zero padding.
    weights: [B, Q, M, L, P] attention weights.
    Returns [B, Q, M * D].
    """
    b, s, m, d = value.shape
    q, n_levels, n_points = locations.shape[1], locations.shape[3], locations.shape[4]
    tracing = torch.jit.is_tracing()  # the ONNX exporter: shapes are traced tensors there
    if not tracing and (len(spatial_shapes) != n_levels or sum(h * w for h, w in spatial_shapes) != s):
        raise ValueError(f"ms_deform_attn_gather: spatial_shapes {list(spatial_shapes)} do not fit {n_levels} "
                         f"levels and {s} value tokens")
    # embedding_bag takes int32 or int64 indices; int32 moves half the bytes.
    itype = torch.int64 if tracing or b * s * m >= 2**31 else torch.int32
    # (b * S) * M + head: the table row of token 0 of each (image, head), [B, 1, M, 1].
    corner0 = (torch.arange(b, device=value.device, dtype=itype)[:, None] * (s * m)
               + torch.arange(m, device=value.device, dtype=itype)[None, :])[:, None, :, None]
    rows, wts = [], []
    start = 0
    # One pass per level with its sizes as Python scalars: every op below is a dense elementwise op
    # over [B, Q, M, P] (broadcasting per-level sizes over small inner dims is several times slower).
    for lvl, (h, w) in enumerate(spatial_shapes):
        loc, attn = locations[:, :, :, lvl], weights[:, :, :, lvl]  # [B, Q, M, P, 2], [B, Q, M, P]
        x0, x1, wx0, wx1 = _axis(loc[..., 0], w, itype)
        y0, y1, wy0, wy1 = _axis(loc[..., 1], h, itype)
        wy0, wy1 = wy0 * attn, wy1 * attn
        # Row of the [B*S*M, D] table: (b * S + level start + y * W + x) * M + head.
        ry0, ry1 = (y0 * w + start) * m + corner0, (y1 * w + start) * m + corner0
        cx0, cx1 = x0 * m, x1 * m
        rows.append(torch.stack([ry0 + cx0, ry0 + cx1, ry1 + cx0, ry1 + cx1], -1))  # [B, Q, M, P, 4]
        wts.append(torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], -1))
        start += h * w
    k = n_levels * n_points * 4
    table = value.reshape(b * s * m, d)  # a view of the [B, S, M, D] value
    if torch.onnx.is_in_onnx_export():
        # ONNX has no EmbeddingBag (the exporter would emit a Loop over bags): Gather rows, weight and
        # sum, one level at a time so that only [B*Q*M, 4 P, D] gathered values exist at once.
        out = sum((table[r.reshape(b * q * m, 4 * n_points)] * w.reshape(b * q * m, 4 * n_points, 1)).sum(1)
                  for r, w in zip(rows, wts))
        return out.view(b, q, m * d)
    out = F.embedding_bag(torch.cat(rows, 3).reshape(b * q * m, k), table,
                          per_sample_weights=torch.cat(wts, 3).reshape(b * q * m, k), mode="sum")
    return out.view(b, q, m * d)


class GatherMSDeformAttn(MSDeformAttn):
    """``MSDeformAttn`` whose ``sample`` is ``ms_deform_attn_gather``; built from a
    reference module (``GatherMSDeformAttn(ref)``), sharing its Linear layers and so its Parameters."""

    def __init__(self, ref: MSDeformAttn) -> None:
        # Not MSDeformAttn.__init__: it would allocate and initialize layers that are replaced at once.
        nn.Module.__init__(self)
        for name, attr in vars(ref).items():  # plain attributes (d_model, n_levels, n_heads, n_points, ...)
            if not name.startswith("_") and name != "training":
                setattr(self, name, attr)
        for name, child in ref.named_children():
            setattr(self, name, child)
        self.train(ref.training)

    def sample(self, value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
        """The gather op (see ``ms_deform_attn_gather``)."""
        return ms_deform_attn_gather(value, spatial_shapes, locations, weights)
