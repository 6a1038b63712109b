"""Deformable DETR's transformer (Zhu et al. 2021): multi-scale token flattening with level
embeddings, the deformable encoder, the query initialization (learned queries with predicted 2-d
reference points, or two-stage: encoder proposals ranked by class score), and the deformable decoder.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detres.modeling.heads.deformable_detr.layers import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
)
from detres.modeling.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from detres.registry import LAYERS


class DecoderRun(NamedTuple):
    """What the transformer hands to the prediction heads.

    hs: every decoder layer's output [L, B, Q, C]; init_reference: the reference fed to layer 0
    [B, Q, 2|4]; references: the reference each layer hands on [L, B, Q, 2|4]. Two-stage only (else
    None): enc_logits [B, S, K] (proposal class logits), enc_coords [B, S, 4] (unactivated proposal
    boxes, +inf where padded/invalid), topk [B, Q] (selected token indices).
    """

    hs: Tensor
    init_reference: Tensor
    references: Tensor
    enc_logits: Tensor | None = None
    enc_coords: Tensor | None = None
    topk: Tensor | None = None


def valid_ratios(mask: Tensor) -> Tensor:
    """mask [B, H, W] (True = padding) -> [B, 2]: unpadded (columns of row 0 / W, rows of column 0 / H)."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def proposal_grid(padding_mask: Tensor, shapes: SpatialShapes) -> tuple[Tensor, Tensor]:
    """Two-stage proposals: one box per token, centred on its cell in the image's valid extent, of
    size 0.05 * 2^level (Appendix A.4).

    padding_mask [B, S] -> (unactivated boxes [B, S, 4] (logit of cxcywh, +inf where padded or not
    strictly inside (0.01, 0.99)), keep [B, S, 1] bool).
    """
    b = padding_mask.shape[0]
    boxes, start = [], 0
    for lvl, (h, w) in enumerate(shapes):
        m = padding_mask[:, start:start + h * w].view(b, h, w)
        valid_h = (~m[:, :, 0]).sum(1)
        valid_w = (~m[:, 0, :]).sum(1)
        ys = torch.arange(h, dtype=torch.float32, device=m.device)
        xs = torch.arange(w, dtype=torch.float32, device=m.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], -1)
        scale = torch.stack([valid_w, valid_h], -1).view(b, 1, 1, 2)
        grid = (grid[None].expand(b, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * (0.05 * 2.0**lvl)
        boxes.append(torch.cat([grid, wh], -1).view(b, -1, 4))
        start += h * w
    props = torch.cat(boxes, 1)
    keep = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
    props = torch.log(props / (1 - props))
    props = props.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~keep, float("inf"))
    return props, keep & ~padding_mask[..., None]


def top_tokens(scores: Tensor, num_queries: int) -> Tensor:
    """scores [B, S] -> indices [B, min(num_queries, S)] of the highest scores, best first (an image
    with fewer tokens than queries keeps them all). The count stays symbolic in exported graphs:
    ``torch.sym_min`` under ``torch.export`` (``min()`` would guard on the token count), a size
    tensor under the ONNX tracer (which would otherwise fix it at the example's count)."""
    if torch.jit.is_tracing():
        k = torch.clamp(torch._shape_as_tensor(scores)[1], max=num_queries)
    else:
        k = torch.sym_min(num_queries, scores.shape[1])
    return torch.topk(scores, k, dim=1)[1]


def flatten_levels(srcs: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor], level_embed: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, SpatialShapes, Tensor]:
    """Per-level [B, C, H, W] maps, [B, H, W] masks and positions -> tokens [B, S, C] (level by level,
    row-major), padding mask [B, S], positions + level embedding [L, C] -> [B, S, C], the level sizes,
    valid ratios [B, L, 2]."""
    # the sizes as the maps report them (not int(...)), so that export keeps H and W dynamic
    shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
    x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    p = torch.cat([q.flatten(2).transpose(1, 2) + level_embed[lvl].view(1, 1, -1) for lvl, q in enumerate(pos)], 1)
    ratios = torch.stack([valid_ratios(m) for m in masks], 1)
    return x, mask, p, shapes, ratios


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """[B, Q, 4] unit-range boxes -> [B, Q, 4 * num_feats]: per coordinate (cx, cy, w, h) the sine
    embedding of coord * 2*pi, (sin, cos) interleaved, coordinates concatenated."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = boxes[:, :, :, None] * (2 * math.pi) / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)


@LAYERS.register()
class DeformableTransformer(nn.Module):
    """Encoder over all levels + decoder with reference points.

    Args:
        d_model: width (the head passes the neck's out_channels).
        nhead: attention heads (deformable and standard).
        num_encoder_layers / num_decoder_layers: stack depths.
        ffn_dim: FFN hidden width.
        dropout: dropout in every layer.
        activation: ``relu`` or ``gelu``.
        num_feature_levels: L (the head passes the number of neck outputs).
        enc_n_points / dec_n_points: sampling points per head and level.
        two_stage: queries from encoder proposals (the head passes its ``two_stage``).
        num_queries: decoder queries (two-stage: proposals kept; the head passes its ``num_queries``).
    """

    def __init__(
        self, *, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu", num_feature_levels: int = 4,
        enc_n_points: int = 4, dec_n_points: int = 4, two_stage: bool = False, num_queries: int = 300,
    ) -> None:
        super().__init__()
        self.d_model, self.nhead, self.two_stage, self.num_queries = d_model, nhead, two_stage, num_queries
        self.num_feature_levels = num_feature_levels
        self.encoder = DeformableEncoder([
            DeformableEncoderLayer(d_model, ffn_dim, dropout, activation, num_feature_levels, nhead, enc_n_points)
            for _ in range(num_encoder_layers)
        ])
        self.decoder = DeformableDecoder([
            DeformableDecoderLayer(d_model, ffn_dim, dropout, activation, num_feature_levels, nhead, dec_n_points)
            for _ in range(num_decoder_layers)
        ])
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialization: Xavier for every matrix, then the deformable attention's
        own scheme, Xavier reference-point head with zero bias, normal level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor], query_embed: Tensor | None,
        enc_class_embed: nn.Module | None = None, enc_bbox_embed: nn.Module | None = None,
        bbox_embed: Sequence[nn.Module] | None = None, select_indices: Tensor | None = None,
    ) -> DecoderRun:
        """srcs / masks / pos: per level [B, C, H_l, W_l] / [B, H_l, W_l] bool / [B, C, H_l, W_l].

        query_embed [Q, 2C] (query position, content) for the single-stage model. Two-stage:
        ``enc_class_embed`` / ``enc_bbox_embed`` score and regress the encoder proposals; the top
        ``num_queries`` by the score of class 0 (the reference's rule) become the queries, or the
        tokens ``select_indices`` [B, Q] when given. ``bbox_embed``: per-layer box heads for
        iterative refinement (None: references stay fixed).
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"DeformableTransformer: built for {self.num_feature_levels} levels, got {len(srcs)}")
        x, mask, p, shapes, ratios = flatten_levels(srcs, masks, pos, self.level_embed)
        memory = self.encoder(x, p, shapes, ratios, mask)
        b, _, c = memory.shape
        if not self.two_stage:
            if query_embed is None:
                raise ValueError("DeformableTransformer: the single-stage model needs query_embed [Q, 2C]")
            qpos, tgt = torch.split(query_embed, c, dim=1)
            qpos, tgt = qpos[None].repeat(b, 1, 1), tgt[None].repeat(b, 1, 1)
            reference = self.reference_points(qpos).sigmoid()
            hs, refs = self.decoder(tgt, qpos, reference, memory, shapes, ratios, mask, bbox_embed)
            return DecoderRun(hs, reference, refs)
        if enc_class_embed is None or enc_bbox_embed is None:
            raise ValueError("DeformableTransformer: two-stage needs the encoder proposal heads (enc_class_embed, enc_bbox_embed)")
        proposals, keep = proposal_grid(mask, shapes)
        enc_memory = self.enc_output_norm(self.enc_output(memory.masked_fill(~keep, 0.0)))
        logits = enc_class_embed(enc_memory)
        coords = enc_bbox_embed(enc_memory) + proposals
        if select_indices is None:
            select_indices = top_tokens(logits[..., 0], self.num_queries)
        top = torch.gather(coords, 1, select_indices[..., None].expand(-1, -1, 4)).detach()
        reference = top.sigmoid()
        qpos, tgt = torch.split(self.pos_trans_norm(self.pos_trans(box_sine_embedding(reference, c // 2))), c, dim=2)
        # contiguous: a strided half would make torch.export's matmul fold check specialize the batch
        qpos, tgt = qpos.contiguous(), tgt.contiguous()
        hs, refs = self.decoder(tgt, qpos, reference, memory, shapes, ratios, mask, bbox_embed)
        return DecoderRun(hs, reference, refs, logits, coords, select_indices)
