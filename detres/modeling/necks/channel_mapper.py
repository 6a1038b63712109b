"""ChannelMapper: 1x1 projections of backbone levels to one width, for DETR-style heads."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from detres.modeling.necks.fpn import conv_norm
from detres.registry import NECKS
from detres.structures import ShapeSpec


@NECKS.register()
class ChannelMapper(nn.Module):
    """Project each of ``in_features`` to ``out_channels`` with a 1x1 conv (DETR's ``input_proj``).

    Outputs are named ``p{k}`` by stride 2^k. ``norm`` (e.g. ``gn``) follows each conv when set.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        in_features: Sequence[str] = ("res5",),
        out_channels: int = 256,
        norm: str = "",
    ) -> None:
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"ChannelMapper in_features {missing} are not backbone outputs {list(input_shape)}")
        self.in_features = list(in_features)
        self.convs = nn.ModuleList(conv_norm(input_shape[f].channels, out_channels, 1, norm) for f in self.in_features)
        self.names = [f"p{int(math.log2(input_shape[f].stride))}" for f in self.in_features]
        self._shapes = {n: ShapeSpec(out_channels, input_shape[f].stride) for n, f in zip(self.names, self.in_features)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """{"p5": ShapeSpec(256, 32), ...}."""
        return dict(self._shapes)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone features -> projected levels."""
        return {n: conv(feats[f]) for n, f, conv in zip(self.names, self.in_features, self.convs)}
