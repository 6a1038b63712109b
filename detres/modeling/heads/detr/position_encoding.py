"""DETR's 2-D position encodings (Carion et al. 2020, Sec. 3.2 and Table 3).

Both take the feature-level padding mask [B, H, W] (True on padding) and return [B, 2*num_pos_feats,
H, W]. ``num_pos_feats`` is half the transformer width; ``DETRHead`` passes it in from ``d_model``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detres.registry import LAYERS


@LAYERS.register()
class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of each cell's (y, x), generalizing "Attention is all you need".

    Output channels: the y half first, then the x half, as the reference.
    normalize: divide the cumulative coordinate by the image's unpadded extent, so positions span
    (0, scale] whatever the padding (DETR's default, scale 2*pi).
    offset: added to the cumulative coordinate before normalizing: 0 in DETR, -0.5 in Deformable DETR
    and its successors (cell centres).
    """

    def __init__(
        self, *, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
        scale: float | None = None, offset: float = 0.0,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, H, W] bool (True = padding) -> [B, 2*num_pos_feats, H, W] float32."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            # the extent is the unshifted count (adding offset 0 is exact: DETR's numbers are unchanged)
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


@LAYERS.register()
class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: one embedding per row and per column (at most ``max_size`` each).

    Output channels: the x (column) half first, then the y half, as the reference.
    """

    def __init__(self, *, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, H, W] -> [B, 2*num_pos_feats, H, W]; H and W must not exceed ``max_size``."""
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"PositionEmbeddingLearned: feature map {h}x{w} exceeds max_size {self.max_size}; "
                "raise max_size or use position_encoding: {_target_: PositionEmbeddingSine}"
            )
        x_emb = self.col_embed(torch.arange(w, device=mask.device))
        y_emb = self.row_embed(torch.arange(h, device=mask.device))
        pos = torch.cat([x_emb.unsqueeze(0).expand(h, w, -1), y_emb.unsqueeze(1).expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)
