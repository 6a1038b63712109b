"""RT-DETR's hybrid encoder (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection",
Sec. 4.2): AIFI, one transformer encoder layer with 2-D sin-cos positions on the coarsest level only,
then CCFF, a top-down and bottom-up fusion of the levels with CSP blocks of RepVGG convs.

Module names equal the official ``HybridEncoder``'s (lyuwenyu/RT-DETR, ``rtdetrv2_pytorch``) below its
``encoder.`` prefix, so a converter maps ``encoder.X`` to ``neck.X`` unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.necks.csp_rep import ConvNormAct, CSPRepLayer, make_activation
from detres.registry import NECKS
from detres.structures import ShapeSpec


def sincos_pos_embed_2d(h: int, w: int, dim: int = 256, temperature: float = 10000.0,
                        device: torch.device | None = None) -> Tensor:
    """RT-DETR's 2-D sin-cos position embedding of an ``h`` x ``w`` map, [1, h*w, dim] float32.

    Token ``t`` (row-major, ``t = y*w + x``) gets ``[sin(a*om), cos(a*om), sin(b*om), cos(b*om)]``
    with ``om_k = 1 / temperature^(k / (dim/4))`` and, reproducing the official ``meshgrid(arange(w),
    arange(h), indexing="ij")``, ``a = t // h`` and ``b = t % h``: on a square map a = row y and
    b = column x; on a non-square map the official layout (not the row/column) is kept.
    """
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim {dim} must be divisible by 4 (sin and cos of two axes)")
    pos_dim = dim // 4
    t = torch.arange(h * w, device=device)
    a = torch.div(t, h, rounding_mode="floor").to(torch.float32)
    b = (t % h).to(torch.float32)
    omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_a = a[:, None] * omega[None]
    out_b = b[:, None] * omega[None]
    return torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)[None]


class AIFILayer(nn.Module):
    """Post-norm transformer encoder layer (RT-DETR's AIFI): ``x = norm1(x + attn(x + pos, x + pos, x))``,
    ``x = norm2(x + linear2(act(linear1(x))))``. ``self_attn`` is ``nn.MultiheadAttention`` (batch first,
    packed ``in_proj``), the official layout."""

    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = make_activation(activation)

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """``src`` [B, N, C], ``pos`` [1 or B, N, C] -> [B, N, C]."""
        q = src if pos is None else src + pos
        attn = self.self_attn(q, q, value=src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class AIFI(nn.Module):
    """``num_layers`` AIFILayers in sequence, sharing one position embedding (keys ``layers.{j}``)."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AIFILayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """[B, N, C] -> [B, N, C]."""
        for layer in self.layers:
            src = layer(src, pos)
        return src


@NECKS.register()
class HybridEncoder(nn.Module):
    """RT-DETR's neck: per level a 1x1 conv + BN to ``hidden_dim`` (``input_proj``), AIFI on the levels
    ``use_encoder_idx`` (default the third, stride 32), then CCFF: top-down, ``lateral_convs`` (1x1 +
    BN + act) on the coarser map, nearest upsampling, concat [upsampled, finer], ``fpn_blocks``
    (CSPRepLayer); bottom-up, ``downsample_convs`` (3x3 stride 2 + BN + act), concat [downsampled,
    top-down], ``pan_blocks``. Outputs ``p{k}`` (stride 2^k) at ``hidden_dim`` channels, finest first.

    Args:
        input_shape: the backbone's ``output_shape()`` (injected; never written in configs).
        in_features: backbone outputs to fuse, finest first (default: all, by stride).
        hidden_dim, nhead, dim_feedforward, dropout, enc_act: width, heads, FFN width, dropout and FFN
            activation of the AIFI layers (official defaults 256, 8, 1024, 0.0, ``gelu``).
        use_encoder_idx: indices into ``in_features`` that get an AIFI encoder (``encoder.{k}``).
        num_encoder_layers: AIFI layers per encoder (0: no attention at all).
        pe_temperature: temperature of the sin-cos positions, computed from each map's size at run time
            (the official code caches them for ``eval_spatial_size``; the values are identical).
        expansion: CSPRepLayer hidden width / ``hidden_dim`` (RT-DETR R50: 1.0, R18/R34: 0.5).
        depth_mult: RepVGG blocks per CSPRepLayer = ``round(3 * depth_mult)``.
        act: activation of the CCFF convs (``silu``).
        version: ``v2`` (``input_proj.{i}.{conv,norm}``, RT-DETRv2) or ``v1`` (``input_proj.{i}.{0,1}``).

    All norms are ``nn.BatchNorm2d`` and train with the encoder, as the official (no frozen option).
    Unlike the official code, maps whose sizes do not halve exactly (inputs not divisible by the
    coarsest stride) are fused by upsampling to the finer map's size.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        in_features: Sequence[str] | None = None,
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000.0,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        version: str = "v2",
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = sorted(input_shape, key=lambda f: input_shape[f].stride)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"HybridEncoder in_features {missing} are not backbone outputs {list(input_shape)}")
        self.in_features = list(in_features)
        n = len(self.in_features)
        if n < 1:
            raise ValueError("HybridEncoder in_features is empty; name at least one backbone output")
        strides = [input_shape[f].stride for f in self.in_features]
        if any(s2 != 2 * s1 for s1, s2 in zip(strides, strides[1:])):
            raise ValueError(f"HybridEncoder in_features {self.in_features} have strides {strides}; CCFF needs "
                             f"consecutive levels, each twice the stride of the previous (e.g. res3, res4, res5)")
        bad = [i for i in use_encoder_idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"HybridEncoder use_encoder_idx {list(bad)} out of range for {n} in_features "
                             f"{self.in_features}; use indices 0..{n - 1}")
        if version not in ("v1", "v2"):
            raise ValueError(f"HybridEncoder version must be 'v1' or 'v2', got {version!r}")
        if hidden_dim % 4 or hidden_dim % nhead:
            raise ValueError(f"HybridEncoder hidden_dim {hidden_dim} must be divisible by 4 (2-D sin-cos "
                             f"positions) and by nhead {nhead}")
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature

        self.input_proj = nn.ModuleList(self._input_proj(input_shape[f].channels, hidden_dim, version)
                                        for f in self.in_features)
        self.encoder = nn.ModuleList(
            AIFI(num_encoder_layers, d_model=hidden_dim, nhead=nhead, dim_feedforward=dim_feedforward,
                 dropout=dropout, activation=enc_act)
            for _ in self.use_encoder_idx
        )
        blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(ConvNormAct(hidden_dim, hidden_dim, 1, act=act) for _ in range(n - 1))
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act)
                                        for _ in range(n - 1))
        self.downsample_convs = nn.ModuleList(ConvNormAct(hidden_dim, hidden_dim, 3, 2, act=act)
                                              for _ in range(n - 1))
        self.pan_blocks = nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act)
                                        for _ in range(n - 1))
        self._shapes = {f"p{int(math.log2(s))}": ShapeSpec(hidden_dim, s) for s in strides}
        self.names = list(self._shapes)
        _ = make_activation(act)  # fail at build time on an unknown name even with one level

    @staticmethod
    def _input_proj(cin: int, cout: int, version: str) -> nn.Sequential:
        conv, norm = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
        if version == "v1":
            return nn.Sequential(conv, norm)
        seq = nn.Sequential()
        seq.add_module("conv", conv)
        seq.add_module("norm", norm)
        return seq

    def output_shape(self) -> dict[str, ShapeSpec]:
        """{"p3": ShapeSpec(hidden_dim, 8), "p4": ..., "p5": ...}, finest first."""
        return dict(self._shapes)

    def encode(self, x: Tensor, k: int) -> Tensor:
        """AIFI ``encoder[k]`` over the tokens of one projected map [B, C, H, W] -> [B, C, H, W], in the
        input's memory format (a channels-last map gets its token rows back as a view, no copy)."""
        b, c, h, w = x.shape
        src = x.flatten(2).permute(0, 2, 1)
        pos = sincos_pos_embed_2d(h, w, c, self.pe_temperature, device=x.device).to(x.dtype)
        out = self.encoder[k](src, pos)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return out.permute(0, 2, 1).reshape(b, c, h, w).contiguous()

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone features {name: [B, C_i, H_i, W_i]} -> {"p3".., [B, hidden_dim, H_i, W_i]}."""
        proj = [p(feats[f]) for f, p in zip(self.in_features, self.input_proj)]
        if self.num_encoder_layers > 0:
            for k, idx in enumerate(self.use_encoder_idx):
                proj[idx] = self.encode(proj[idx], k)
        n = len(proj)
        # Top-down (coarse to fine): inner[0] is the current coarsest fused map; its lateral conv output
        # replaces it, as the official code, and is what the bottom-up path later concatenates.
        inner = [proj[-1]]
        for j, idx in enumerate(range(n - 1, 0, -1)):
            top = self.lateral_convs[j](inner[0])
            inner[0] = top
            low = proj[idx - 1]
            up = F.interpolate(top, size=low.shape[-2:], mode="nearest")
            inner.insert(0, self.fpn_blocks[j](torch.cat([up, low], dim=1)))
        outs = [inner[0]]
        for j in range(n - 1):
            down = self.downsample_convs[j](outs[-1])
            outs.append(self.pan_blocks[j](torch.cat([down, inner[j + 1]], dim=1)))
        return dict(zip(self.names, outs))
