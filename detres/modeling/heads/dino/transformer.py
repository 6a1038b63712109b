"""DINO's transformer (Zhang et al. 2023): the deformable encoder, mixed query selection and the
decoder with "look forward twice" box refinement.

- Mixed query selection (Sec. 3.3): the top-``num_queries`` encoder proposals by their best class
  logit give the positional queries (reference boxes, detached); the content queries are learned
  (``tgt_embed``), one per slot.
- Decoder (Sec. 3.4): each layer's query position is an MLP (``ref_point_head``) of the sine embedding
  of its reference box; after the layer the box head refines the reference from the un-normed output.
  The next layer gets the refined box detached, while the box reported for layer l+1 is built on the
  undetached one, so layer l+1's box loss also updates layer l ("look forward twice").
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detres.modeling.heads.deformable_detr.layers import DeformableDecoderLayer, DeformableEncoder, DeformableEncoderLayer
from detres.modeling.heads.deformable_detr.transformer import box_sine_embedding, flatten_levels, proposal_grid, top_tokens
from detres.modeling.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from detres.modeling.layers.mlp import MLP
from detres.registry import LAYERS
from detres.structures.boxes import inverse_sigmoid

#: DINO's inverse_sigmoid clamp (Deformable DETR uses 1e-5)
EPS = 1e-3


class DINORun(NamedTuple):
    """What DINO's transformer hands to the prediction heads (D denoising queries first, then Q).

    hs: every decoder layer's normed output [L, B, D+Q, C]; references: the box each layer received
    [L, B, D+Q, 4] (layer 0: the selected proposals; layer l > 0: layer l-1's refinement, undetached);
    enc_logits [B, Q, K] / enc_boxes [B, Q, 4]: the selected encoder proposals' class logits and
    refined boxes (undetached); init_proposals [B, Q, 4]: their unrefined grid boxes; topk [B, Q].
    """

    hs: Tensor
    references: Tensor
    enc_logits: Tensor
    enc_boxes: Tensor
    init_proposals: Tensor
    topk: Tensor


class DINODecoder(nn.Module):
    """``layers`` of ``DeformableDecoderLayer`` with query positions from the reference boxes and a
    final LayerNorm (``norm``) on every layer's output. Keys: ``layers``, ``norm``, ``ref_point_head``."""

    def __init__(self, layers: Sequence[DeformableDecoderLayer], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)

    def forward(self, t: Tensor, reference: Tensor, memory: Tensor, shapes: SpatialShapes, ratios: Tensor,
                padding_mask: Tensor | None, bbox_embed: Sequence[nn.Module],
                self_attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """t [B, Q, C] content queries; reference [B, Q, 4] boxes in [0, 1]; ratios [B, L, 2].

        Returns the normed outputs [L, B, Q, C] and the box each layer received [L, B, Q, 4].
        """
        outs, refs = [], [reference]
        c = t.shape[-1]
        for lid, layer in enumerate(self.layers):
            ref_in = reference[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
            # sine embedding of the level-0 box, coordinates in DINO's (y, x, w, h) order
            sine = box_sine_embedding(ref_in[:, :, 0, [1, 0, 2, 3]], c // 2)
            t = layer(t, self.ref_point_head(sine), ref_in, memory, shapes, padding_mask, self_attn_mask)
            new = (bbox_embed[lid](t) + inverse_sigmoid(reference, EPS)).sigmoid()
            reference = new.detach()
            refs.append(new)
            outs.append(self.norm(t))
        return torch.stack(outs), torch.stack(refs[:-1])


@LAYERS.register()
class DINOTransformer(nn.Module):
    """Deformable encoder over all levels + mixed query selection + DINO decoder.

    Args:
        d_model: width (the head passes the neck's out_channels).
        nhead: attention heads.
        num_encoder_layers / num_decoder_layers: stack depths.
        ffn_dim: FFN hidden width.
        dropout: dropout in every layer.
        activation: ``relu`` or ``gelu``.
        num_feature_levels: L (the head passes the number of neck outputs).
        enc_n_points / dec_n_points: sampling points per head and level.
        num_queries: selected proposals = learned content queries (the head passes its ``num_queries``).
        num_classes: K of the encoder proposal classifier (the head passes its ``num_classes``).
    """

    def __init__(
        self, *, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        ffn_dim: int = 2048, dropout: float = 0.0, activation: str = "relu", num_feature_levels: int = 4,
        enc_n_points: int = 4, dec_n_points: int = 4, num_queries: int = 900, num_classes: int = 80,
    ) -> None:
        super().__init__()
        self.d_model, self.nhead, self.num_queries = d_model, nhead, num_queries
        self.num_feature_levels = num_feature_levels
        self.encoder = DeformableEncoder([
            DeformableEncoderLayer(d_model, ffn_dim, dropout, activation, num_feature_levels, nhead, enc_n_points)
            for _ in range(num_encoder_layers)
        ])
        self.decoder = DINODecoder([
            DeformableDecoderLayer(d_model, ffn_dim, dropout, activation, num_feature_levels, nhead, dec_n_points)
            for _ in range(num_decoder_layers)
        ], d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed = nn.Linear(d_model, num_classes)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialization: Xavier for every matrix, the deformable attention's own
        scheme, normal level and content embeddings; the proposal heads start like the box and class
        heads (prior-probability bias, zero last box layer)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)
        nn.init.constant_(self.enc_out_class_embed.bias, -4.59511985013459)  # -log((1 - 0.01) / 0.01)
        nn.init.zeros_(self.enc_out_bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.enc_out_bbox_embed.layers[-1].bias)

    def forward(
        self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor], bbox_embed: Sequence[nn.Module],
        select_indices: Tensor | None = None, dn_content: Tensor | None = None, dn_boxes: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> DINORun:
        """srcs / masks / pos: per level [B, C, H_l, W_l] / [B, H_l, W_l] bool / [B, C, H_l, W_l].

        bbox_embed: per decoder layer box heads. select_indices [B, Q]: use these encoder tokens instead
        of the top-scoring ones. dn_content [B, D, C] / dn_boxes [B, D, 4] (unactivated) / self_attn_mask
        [D+Q, D+Q]: denoising queries put before the matching queries (training).
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"DINOTransformer: built for {self.num_feature_levels} levels, got {len(srcs)}")
        x, mask, p, shapes, ratios = flatten_levels(srcs, masks, pos, self.level_embed)
        memory = self.encoder(x, p, shapes, ratios, mask)
        b = memory.shape[0]

        proposals, keep = proposal_grid(mask, shapes)
        enc_memory = self.enc_output_norm(self.enc_output(memory.masked_fill(~keep, 0.0)))
        logits = self.enc_out_class_embed(enc_memory)
        coords = self.enc_out_bbox_embed(enc_memory) + proposals
        if select_indices is None:
            select_indices = top_tokens(logits.max(-1)[0], self.num_queries)
        k = select_indices.shape[1]
        idx4 = select_indices[..., None].expand(-1, -1, 4)
        top = torch.gather(coords, 1, idx4)
        enc_logits = torch.gather(logits, 1, select_indices[..., None].expand(-1, -1, logits.shape[-1]))
        init_proposals = torch.gather(proposals, 1, idx4).sigmoid()

        t = self.tgt_embed.weight[None, :k].expand(b, -1, -1)
        ref_unact = top.detach()
        if dn_content is not None:
            t = torch.cat([dn_content, t], 1)
            ref_unact = torch.cat([dn_boxes, ref_unact], 1)
            if self_attn_mask is not None:
                self_attn_mask = self_attn_mask[:t.shape[1], :t.shape[1]]
        hs, refs = self.decoder(t, ref_unact.sigmoid(), memory, shapes, ratios, mask, bbox_embed, self_attn_mask)
        return DINORun(hs, refs, enc_logits, top.sigmoid(), init_proposals, select_indices)
