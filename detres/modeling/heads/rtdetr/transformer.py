"""RT-DETR's decoder side (Zhao et al. 2024, Sec. 4.3-4.4; RT-DETRv2, Lv et al. 2024): per-level input
projections of the hybrid encoder's maps, encoder anchors on a grid per level, query selection of the
top-scoring anchors (content = their encoder features, position = their refined boxes), and a decoder of
self-attention, deformable cross-attention and FFN with iterative box refinement.

Module names follow the official ``RTDETRTransformerv2`` (without its denoising embedding, which is the
head's ``denoising.label_enc``), so official ``decoder.*`` weights load under ``head.transformer.*``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detres.modeling.heads.deformable_detr.layers import DeformableDecoderLayer
from detres.modeling.heads.deformable_detr.transformer import top_tokens
from detres.modeling.layers.mlp import MLP
from detres.modeling.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from detres.registry import LAYERS
from detres.structures.boxes import inverse_sigmoid


class RTDETRDecoderLayer(DeformableDecoderLayer):
    """Post-norm decoder layer in RT-DETR's order of names: ``norm1`` after self-attention, ``norm2``
    after the deformable cross-attention, ``norm3`` after the FFN (Deformable DETR swaps norm1/norm2)."""

    def forward(self, t: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor, shapes: SpatialShapes,
                padding_mask: Tensor | None, self_attn_mask: Tensor | None = None) -> Tensor:
        """t, query_pos [B, Q, C]; reference [B, Q, L, 4]; memory [B, S, C] -> [B, Q, C]."""
        q = t + query_pos
        t = self.norm1(t + self.dropout(self.self_attn(q, q, t, attn_mask=self_attn_mask, need_weights=False)[0]))
        t = self.norm2(t + self.dropout(self.cross_attn(t + query_pos, reference, memory, shapes, padding_mask)))
        y = self.linear2(self.dropout(self.act(self.linear1(t))))
        return self.norm3(t + self.dropout(y))


class RTDETRRun(NamedTuple):
    """Every decoder layer's logits [L, B, D+Q, K] and boxes [L, B, D+Q, 4] (D denoising queries
    first), the selected encoder anchors' logits [B, Q, K] and boxes [B, Q, 4], their indices [B, Q]."""

    logits: Tensor
    boxes: Tensor
    enc_logits: Tensor
    enc_boxes: Tensor
    topk: Tensor


def grid_anchors(shapes: SpatialShapes, device: torch.device, grid_size: float = 0.05, eps: float = 0.01
                 ) -> tuple[Tensor, Tensor]:
    """One anchor per cell: centre ((x + 0.5) / W, (y + 0.5) / H), size grid_size * 2^level, in logit
    space -> ([1, S, 4] (+inf where not strictly inside (eps, 1 - eps)), valid [1, S, 1] bool)."""
    anchors = []
    for lvl, (h, w) in enumerate(shapes):
        ys = torch.arange(h, dtype=torch.float32, device=device)
        xs = torch.arange(w, dtype=torch.float32, device=device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        xy = torch.stack([gx, gy], -1)[None] + 0.5
        # new_full keeps traced sizes symbolic, where torch.tensor([w, h]) would freeze them
        xy = xy / torch.stack([xy.new_full((), w), xy.new_full((), h)])
        wh = torch.ones_like(xy) * (grid_size * 2.0**lvl)
        anchors.append(torch.cat([xy, wh], -1).reshape(1, h * w, 4))
    a = torch.cat(anchors, 1)
    valid = ((a > eps) & (a < 1 - eps)).all(-1, keepdim=True)
    a = torch.log(a / (1 - a))
    return torch.where(valid, a, torch.full_like(a, float("inf"))), valid


def _proj(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 1, bias=False), norm=nn.BatchNorm2d(cout)))


@LAYERS.register()
class RTDETRTransformer(nn.Module):
    """Query selection + deformable decoder over the hybrid encoder's levels.

    Args:
        in_channels: channels of each input level (the head passes the neck's).
        d_model: width.
        num_classes: K (the head passes it).
        num_queries: selected anchors = decoder queries (the head passes it).
        nhead / num_decoder_layers / ffn_dim / dropout / activation: the decoder layers.
        n_points: sampling points per head and level.
        eval_layer: the decoder layer whose predictions are the outputs (-1: the last).
    """

    def __init__(
        self, *, in_channels: Sequence[int], d_model: int = 256, num_classes: int = 80, num_queries: int = 300,
        nhead: int = 8, num_decoder_layers: int = 6, ffn_dim: int = 1024, dropout: float = 0.0,
        activation: str = "relu", n_points: int = 4,
    ) -> None:
        super().__init__()
        self.d_model, self.num_queries, self.num_classes = d_model, num_queries, num_classes
        n_levels = len(in_channels)
        self.input_proj = nn.ModuleList(_proj(c, d_model) for c in in_channels)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            RTDETRDecoderLayer(d_model, ffn_dim, dropout, activation, n_levels, nhead, n_points)
            for _ in range(num_decoder_layers)
        )
        self.query_pos_head = MLP(4, 2 * d_model, d_model, 2)
        self.enc_output = nn.Sequential(OrderedDict(proj=nn.Linear(d_model, d_model), norm=nn.LayerNorm(d_model)))
        self.enc_score_head = nn.Linear(d_model, num_classes)
        self.enc_bbox_head = MLP(d_model, d_model, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_decoder_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_decoder_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialization: prior-probability class biases, zero last box layers,
        Xavier for the encoder output, query position head and input projections."""
        bias = -torch.log(torch.tensor((1 - 0.01) / 0.01)).item()
        for head in [self.enc_score_head, *self.dec_score_head]:
            nn.init.constant_(head.bias, bias)
        for mlp in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        for lin in self.query_pos_head.layers:
            nn.init.xavier_uniform_(lin.weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor] | None = None,
                select_indices: Tensor | None = None, dn_content: Tensor | None = None,
                dn_boxes: Tensor | None = None, self_attn_mask: Tensor | None = None) -> RTDETRRun:
        """feats: per level [B, C_l, H_l, W_l]; masks: per level [B, H_l, W_l] bool (True = padding;
        None: no padding, as the reference's fixed-size input). ``select_indices`` [B, Q] replaces the
        top-k; ``dn_*`` / ``self_attn_mask``: denoising queries put first (training)."""
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        # the sizes as the maps report them (not int(...)), so that export keeps H and W dynamic
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        memory = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pad = torch.cat([m.flatten(1) for m in masks], 1) if masks is not None else None
        anchors, valid = grid_anchors(shapes, memory.device)
        if pad is not None:  # padded cells are not anchors either
            valid = valid & ~pad[..., None]
            anchors = anchors.masked_fill(pad[..., None], float("inf"))
        enc = self.enc_output(valid.to(memory.dtype) * memory)
        logits = self.enc_score_head(enc)
        if select_indices is None:
            select_indices = top_tokens(logits.max(-1).values, self.num_queries)
        gather = lambda x: torch.gather(x, 1, select_indices[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        top_logits, content = gather(logits), gather(enc)
        # the box head is per token: run on the selected tokens only (the same values, Q instead of all tokens)
        top_coords = self.enc_bbox_head(content) + gather(anchors.expand(enc.shape[0], -1, -1))
        content = content.detach()
        ref_unact = top_coords.detach()
        if dn_content is not None:
            content = torch.cat([dn_content, content], 1)
            ref_unact = torch.cat([dn_boxes, ref_unact], 1)
            if self_attn_mask is not None:
                self_attn_mask = self_attn_mask[:content.shape[1], :content.shape[1]]
        out_logits, out_boxes = self.decode(content, ref_unact, memory, shapes, pad, self_attn_mask)
        return RTDETRRun(out_logits, out_boxes, top_logits, top_coords.sigmoid(), select_indices)

    def decode(self, t: Tensor, ref_unact: Tensor, memory: Tensor, shapes: SpatialShapes,
               pad: Tensor | None, self_attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Iterative refinement: layer l's box is its head's delta on the reference it received; the
        next layer gets it detached, while the box reported for layer l > 0 is built on the previous
        box undetached (the gradient path of DINO's look-forward-twice)."""
        n_levels = len(shapes)
        ref = ref_unact.sigmoid()
        ref_detached, logits, boxes = ref.detach(), [], []
        for i, layer in enumerate(self.decoder.layers):
            reference = ref_detached[:, :, None].expand(-1, -1, n_levels, -1)
            t = layer(t, self.query_pos_head(ref_detached), reference, memory, shapes, pad, self_attn_mask)
            delta = self.dec_bbox_head[i](t)
            new = (delta + inverse_sigmoid(ref_detached)).sigmoid()
            boxes.append(new if i == 0 else (delta + inverse_sigmoid(ref)).sigmoid())
            logits.append(self.dec_score_head[i](t))
            ref, ref_detached = new, new.detach()
        return torch.stack(logits), torch.stack(boxes)
