"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR", Sec. 4.1, Eq. 3).

Each query looks at ``n_points`` sampled locations per head and per feature level around its
reference point; the sampling offsets and the attention weights (softmaxed over the levels x points
of a head) are linear functions of the query. Sampling is bilinear with zero padding in the
``align_corners=False`` convention of ``F.grid_sample``. This is the reference maths in plain PyTorch
(what training runs and what the fixtures check); ``detres.runtime`` swaps in a faster sampler for
inference (``MSDeformAttn.sample`` is the seam).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.registry import LAYERS

#: Feature level sizes [(H_l, W_l), ...] in the order the levels are flattened into the value tokens:
#: the maps' own ``shape`` entries (ints in eager, symbolic sizes under ONNX tracing / torch.export).
SpatialShapes = list[tuple[int, int]]


def ms_deform_attn_sample(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear sampling of every level, weighted sum over levels and points (the reference op).

    value: [B, S, M, D] (S = sum of H_l * W_l tokens, level by level, row-major; M heads of width D).
    locations: [B, Q, M, L, P, 2] normalized (x, y) in [0, 1] of each level's padded map.
    weights: [B, Q, M, L, P] attention weights.
    Returns [B, Q, M * D].
    """
    b, _, m, d = value.shape
    _, q, _, n_levels, n_points, _ = locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)  # [B*M, D, H, W]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*M, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w_ = weights.transpose(1, 2).reshape(b * m, 1, q, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1)  # [B*M, D, Q]
    return out.view(b, m * d, q).transpose(1, 2).contiguous()


def sampling_locations(reference: Tensor, offsets: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
    """Where each (query, head, level, point) samples, normalized to [0, 1].

    reference: [B, Q, L, 2] points (x, y) or [B, Q, L, 4] boxes (cx, cy, w, h), per level.
    offsets: [B, Q, M, L, P, 2]. Points: offsets are in cells of each level (divided by (W_l, H_l)).
    Boxes: offsets are in units of half the box size divided by P (the paper's refinement variant).
    """
    if reference.shape[-1] == 2:
        # [L, 2] (W_l, H_l); new_full keeps traced sizes symbolic, where float(w) would freeze them
        norm = torch.stack([torch.stack([offsets.new_full((), w), offsets.new_full((), h)]) for h, w in spatial_shapes])
        return reference[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
    if reference.shape[-1] == 4:
        n_points = offsets.shape[-2]
        return reference[:, :, None, :, None, :2] + offsets / n_points * reference[:, :, None, :, None, 2:] * 0.5
    raise ValueError(f"MSDeformAttn: reference points must have 2 (x, y) or 4 (cx, cy, w, h) values, got {reference.shape[-1]}")


@LAYERS.register()
class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention; parameter names as the official module (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``) so official checkpoints load as they are.

    Args:
        d_model: width of queries and values.
        n_levels: number of feature levels L.
        n_heads: attention heads M (d_model must divide by it).
        n_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialization: offsets start on rings around the reference point, one
        direction per head (point k at distance k+1), uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def sample(self, value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
        """The sampling op (see ``ms_deform_attn_sample``); runtime passes override it."""
        return ms_deform_attn_sample(value, spatial_shapes, locations, weights)

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, spatial_shapes: SpatialShapes,
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query [B, Q, C]; reference [B, Q, L, 2 or 4] normalized (see ``sampling_locations``);
        value [B, S, C] flattened levels; value_padding_mask [B, S] bool (True = padding, zeroed).
        Returns [B, Q, C]."""
        b, q, _ = query.shape
        m, n_levels, n_points = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != n_levels:
            raise ValueError(f"MSDeformAttn: built for {n_levels} levels, got {len(spatial_shapes)} feature maps")
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(b, v.shape[1], m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(b, q, m, n_levels, n_points, 2)
        weights = self.attention_weights(query).view(b, q, m, n_levels * n_points).softmax(-1)
        weights = weights.view(b, q, m, n_levels, n_points)
        locations = sampling_locations(reference, offsets, spatial_shapes)
        return self.output_proj(self.sample(v, spatial_shapes, locations, weights))
