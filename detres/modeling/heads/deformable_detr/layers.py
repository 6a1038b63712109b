"""Deformable DETR's encoder and decoder stacks (Zhu et al. 2021, Sec. 4.1 and Appendix A.2).

Post-norm layers as the reference: the encoder layer is multi-scale deformable self-attention over
all feature tokens + FFN; the decoder layer is standard self-attention among the queries, deformable
cross-attention into the encoder memory around each query's reference point, + FFN. Module names
follow the official code so its checkpoints load unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.modeling.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from detres.structures.boxes import inverse_sigmoid

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"DeformableTransformer.activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


class DeformableEncoderLayer(nn.Module):
    """x = norm1(x + attn(x + pos, ref, x)); x = norm2(x + ffn(x)). Keys: ``self_attn``, ``norm1``,
    ``linear1``, ``linear2``, ``norm2``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str, n_levels: int,
                 n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: SpatialShapes, padding_mask: Tensor | None) -> Tensor:
        """x, pos [B, S, C]; reference [B, S, L, 2]; padding_mask [B, S] -> [B, S, C]."""
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference, x, shapes, padding_mask)))
        y = self.linear2(self.dropout(self.act(self.linear1(x))))
        return self.norm2(x + self.dropout(y))


class DeformableDecoderLayer(nn.Module):
    """t = norm2(t + self_attn(t + qpos, t + qpos, t)); t = norm1(t + cross_attn(t + qpos, ref, memory));
    t = norm3(t + ffn(t)). Keys: ``self_attn`` (``nn.MultiheadAttention``), ``norm2``, ``cross_attn``,
    ``norm1``, ``linear1``, ``linear2``, ``norm3``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str, n_levels: int,
                 n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, t: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor, shapes: SpatialShapes,
                padding_mask: Tensor | None, self_attn_mask: Tensor | None = None) -> Tensor:
        """t, query_pos [B, Q, C]; reference [B, Q, L, 2 or 4]; memory [B, S, C] -> [B, Q, C].

        self_attn_mask [Q, Q] bool: True where query i must not attend to query j (DINO's denoising groups).
        """
        q = t + query_pos
        t = self.norm2(t + self.dropout(self.self_attn(q, q, t, attn_mask=self_attn_mask, need_weights=False)[0]))
        t = self.norm1(t + self.dropout(self.cross_attn(t + query_pos, reference, memory, shapes, padding_mask)))
        y = self.linear2(self.dropout(self.act(self.linear1(t))))
        return self.norm3(t + self.dropout(y))


def encoder_reference_points(shapes: SpatialShapes, valid_ratios: Tensor) -> Tensor:
    """Every token's cell centre, normalized by its level's valid (unpadded) extent, then scaled to
    each level's padded frame: [B, S, L, 2] (x, y). valid_ratios [B, L, 2] (w, h)."""
    refs = []
    for lvl, (h, w) in enumerate(shapes):
        ys = torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.Module):
    """``layers`` of ``DeformableEncoderLayer`` over the flattened multi-scale tokens."""

    def __init__(self, layers: Sequence[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, pos: Tensor, shapes: SpatialShapes, valid_ratios: Tensor,
                padding_mask: Tensor | None) -> Tensor:
        """x, pos [B, S, C]; valid_ratios [B, L, 2]; padding_mask [B, S] -> memory [B, S, C]."""
        reference = encoder_reference_points(shapes, valid_ratios).to(x.dtype)
        for layer in self.layers:
            x = layer(x, pos, reference, shapes, padding_mask)
        return x


class DeformableDecoder(nn.Module):
    """``layers`` of ``DeformableDecoderLayer``; with ``bbox_embed`` (iterative box refinement) each
    layer refines the reference boxes for the next, detached between layers (Sec. 4.2 / A.4)."""

    def __init__(self, layers: Sequence[DeformableDecoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, t: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor, shapes: SpatialShapes,
                valid_ratios: Tensor, padding_mask: Tensor | None,
                bbox_embed: Sequence[nn.Module] | None = None) -> tuple[Tensor, Tensor]:
        """t, query_pos [B, Q, C]; reference [B, Q, 2 or 4] normalized to the unpadded image.

        Returns every layer's output [L, B, Q, C] and the reference each layer hands on [L, B, Q, 2|4]
        (refined by ``bbox_embed[l]`` when given, else unchanged).
        """
        outputs, references = [], []
        for lid, layer in enumerate(self.layers):
            if reference.shape[-1] == 4:
                ref_in = reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_in = reference[:, :, None] * valid_ratios[:, None]
            t = layer(t, query_pos, ref_in, memory, shapes, padding_mask)
            if bbox_embed is not None:
                delta = bbox_embed[lid](t)
                if reference.shape[-1] == 4:
                    new = delta + inverse_sigmoid(reference)
                else:
                    new = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1)
                reference = new.sigmoid().detach()
            outputs.append(t)
            references.append(reference)
        return torch.stack(outputs), torch.stack(references)
