"""DETR's encoder-decoder transformer (Carion et al. 2020, Sec. 3.2, Fig. 10).

Positions are added to queries and keys at every attention layer (never to values). Post-norm is the
reference default; ``pre_norm`` moves each LayerNorm before its sub-layer and adds a final encoder
norm. The decoder always ends with a LayerNorm, applied to every intermediate output too, so the
auxiliary losses (Sec. 3.2, "Auxiliary decoding losses") see normalized features.

Tensors inside are sequence-first ([S, B, C]) and attention modules are ``nn.MultiheadAttention``,
so parameter names and the packed ``in_proj_weight`` [3C, C] (q, k, v rows) equal the reference's.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.registry import LAYERS

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Self-attention + FFN over the flattened feature map [HW, B, C]."""

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, src: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None) -> Tensor:
        """src, pos [HW, B, C]; key_padding_mask [B, HW] (True = padding) -> [HW, B, C]."""
        if self.pre_norm:
            x = self.norm1(src)
            q = k = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0])
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, FFN."""

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]
        self.pre_norm = pre_norm

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None, pos: Tensor | None, query_pos: Tensor | None
    ) -> Tensor:
        """tgt, query_pos [Q, B, C]; memory, pos [HW, B, C]; mask [B, HW] -> [Q, B, C]."""
        if self.pre_norm:
            x = self.norm1(tgt)
            q = k = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(
                _with_pos(x, query_pos), _with_pos(memory, pos), memory,
                key_padding_mask=memory_key_padding_mask, need_weights=False,
            )[0])
            x = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        tgt2 = self.multihead_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
            key_padding_mask=memory_key_padding_mask, need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(tgt))))))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with a final LayerNorm in the pre-norm variant."""

    def __init__(self, layer: EncoderLayer, num_layers: int, norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None) -> Tensor:
        """[HW, B, C] -> memory [HW, B, C]."""
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers and a final LayerNorm applied to each returned output."""

    def __init__(self, layer: DecoderLayer, num_layers: int, norm: nn.Module, return_intermediate: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None, pos: Tensor | None, query_pos: Tensor | None
    ) -> Tensor:
        """-> [L, Q, B, C] (every layer's normalized output, or only the last one with L = 1)."""
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos)
            if self.return_intermediate:
                outs.append(self.norm(tgt))
        if not self.return_intermediate:
            outs.append(self.norm(tgt))
        return torch.stack(outs)


@LAYERS.register()
class Transformer(nn.Module):
    """DETR's transformer: ``forward(src, mask, query_embed, pos)`` -> decoder outputs.

    Args:
        d_model: width C (``DETRHead`` passes in its input feature's channels); nhead: attention heads.
        num_encoder_layers / num_decoder_layers: depths.
        ffn_dim: hidden width of each FFN; dropout: on attention weights and residual branches.
        pre_norm: LayerNorm before each sub-layer (plus a final encoder norm) instead of after.
        return_intermediate_dec: return every decoder layer's output (for auxiliary losses).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        return_intermediate_dec: bool = True,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Transformer activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if d_model % nhead:
            raise ValueError(f"Transformer: d_model {d_model} is not divisible by nhead {nhead}")
        enc = EncoderLayer(d_model, nhead, ffn_dim, dropout, activation, pre_norm)
        self.encoder = TransformerEncoder(enc, num_encoder_layers, nn.LayerNorm(d_model) if pre_norm else None)
        dec = DecoderLayer(d_model, nhead, ffn_dim, dropout, activation, pre_norm)
        self.decoder = TransformerDecoder(dec, num_decoder_layers, nn.LayerNorm(d_model), return_intermediate_dec)
        self.d_model, self.nhead = d_model, nhead
        # Xavier-uniform on every matrix, as the reference (LayerNorm and biases keep their defaults).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """src, pos [B, C, H, W]; mask [B, H, W] (True = padding); query_embed [Q, C].

        Returns hs [L, B, Q, C] (decoder outputs, L = layers or 1) and memory [B, C, H, W].
        """
        b, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, b, 1)
        key_padding_mask = mask.flatten(1)
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, key_padding_mask, pos)
        hs = self.decoder(tgt, memory, key_padding_mask, pos, query_pos)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(b, c, h, w)
