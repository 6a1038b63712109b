"""ChannelMapper: projections of backbone levels to one width, for DETR-style heads (DETR's and
Deformable DETR's ``input_proj``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from detres.modeling.backbones.norm import make_norm
from detres.registry import NECKS
from detres.structures import ShapeSpec


def _proj(cin: int, cout: int, k: int, norm: str, bias: bool, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)]
    if norm not in ("", "none"):
        layers.append(make_norm(norm, cout))
    return nn.Sequential(*layers)


@NECKS.register()
class ChannelMapper(nn.Module):
    """Project each of ``in_features`` to ``out_channels`` with a 1x1 conv (+ ``norm``), and add
    ``num_extra_levels`` coarser levels, each a 3x3 stride-2 conv (+ ``norm``): the first on the last
    backbone level itself (not its projection), the next ones on the previous extra level (Deformable
    DETR, Zhu et al. 2021, Sec. 4.1 and Appendix A.2).

    ``in_features``: backbone outputs to project, finest first; None: every output of the backbone, so
    swapping the backbone (a timm model, fewer levels) needs no neck line.

    Outputs are named ``p{k}`` by stride 2^k. Module names: ``convs.{i}.{0: conv, 1: norm}``,
    ``extra_convs.{j}.{0, 1}``. ``bias``: the convs have a bias (the references' layout, also with a norm).
    ``init``: ``default`` (PyTorch's conv init) or ``xavier`` (Xavier-uniform weights, zero bias: Deformable
    DETR's).
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        in_features: Sequence[str] | None = ("res5",),
        out_channels: int = 256,
        norm: str = "",
        num_extra_levels: int = 0,
        bias: bool = True,
        init: str = "default",
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = sorted(input_shape, key=lambda f: input_shape[f].stride)
        if not in_features:
            raise ValueError(f"ChannelMapper in_features is empty; name some of the backbone outputs {list(input_shape)}")
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"ChannelMapper in_features {missing} are not backbone outputs {list(input_shape)}")
        if num_extra_levels < 0:
            raise ValueError(f"ChannelMapper num_extra_levels must be >= 0, got {num_extra_levels}")
        self.in_features = list(in_features)
        self.convs = nn.ModuleList(_proj(input_shape[f].channels, out_channels, 1, norm, bias) for f in self.in_features)
        last = input_shape[self.in_features[-1]]
        self.extra_convs = nn.ModuleList(
            _proj(last.channels if j == 0 else out_channels, out_channels, 3, norm, bias, stride=2)
            for j in range(num_extra_levels)
        )
        self._shapes = {f"p{int(math.log2(input_shape[f].stride))}": ShapeSpec(out_channels, input_shape[f].stride)
                        for f in self.in_features}
        for j in range(num_extra_levels):
            stride = last.stride * 2 ** (j + 1)
            self._shapes[f"p{int(math.log2(stride))}"] = ShapeSpec(out_channels, stride)
        self.names = list(self._shapes)
        if init not in ("default", "xavier"):
            raise ValueError(f"ChannelMapper init must be 'default' or 'xavier', got {init!r}")
        if init == "xavier":
            for seq in [*self.convs, *self.extra_convs]:
                nn.init.xavier_uniform_(seq[0].weight)
                if seq[0].bias is not None:
                    nn.init.zeros_(seq[0].bias)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """{"p5": ShapeSpec(256, 32), ...}, finest first."""
        return dict(self._shapes)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone features -> projected levels (+ the extra ones), finest first."""
        outs = [conv(feats[f]) for f, conv in zip(self.in_features, self.convs)]
        x = feats[self.in_features[-1]]
        for conv in self.extra_convs:
            x = conv(x)
            outs.append(x)
        return dict(zip(self.names, outs))
