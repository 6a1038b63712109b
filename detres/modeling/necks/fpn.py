"""Feature Pyramid Network (Lin et al. 2017): lateral 1x1 + top-down sum + 3x3 output convs."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.backbones.norm import make_norm
from detres.registry import NECKS
from detres.structures import ShapeSpec

TOP_BLOCKS = ("maxpool", "p6p7", "none")


def conv_norm(cin: int, cout: int, k: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Conv (bias only without norm, as detectron2 and torchvision) followed by an optional norm."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=norm in ("", "none"))]
    if norm not in ("", "none"):
        layers.append(make_norm(norm, cout))
    return nn.Sequential(*layers)


@NECKS.register()
class FPN(nn.Module):
    """FPN over ``in_features`` of the backbone, giving ``p{k}`` with stride 2^k.

    Args:
        input_shape: the backbone's ``output_shape()`` (injected; never written in configs).
        in_features: backbone feature names, finest first (e.g. res2..res5).
        out_channels: channels of every output level.
        top_block: ``maxpool`` (p6 = 1x1 max-pool stride 2 of p5), ``p6p7`` (RetinaNet's two
            stride-2 3x3 convs), or ``none``.
        top_block_in: ``p5`` or the last backbone feature (e.g. ``res5``) for ``p6p7``.
        norm: norm after each conv (``""``, ``bn``, ``frozen_bn``, ``gn``).
        fuse: ``sum`` (the paper) or ``avg`` of lateral and upsampled top-down features.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        out_channels: int = 256,
        top_block: str = "maxpool",
        top_block_in: str = "p5",
        norm: str = "",
        fuse: str = "sum",
    ) -> None:
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not backbone outputs {list(input_shape)}")
        if top_block not in TOP_BLOCKS:
            raise ValueError(f"FPN top_block must be one of {TOP_BLOCKS}, got {top_block!r}")
        if fuse not in ("sum", "avg"):
            raise ValueError(f"FPN fuse must be 'sum' or 'avg', got {fuse!r}")
        self.in_features = list(in_features)
        strides = [input_shape[f].stride for f in self.in_features]
        self.levels = [int(math.log2(s)) for s in strides]
        self.lateral_convs = nn.ModuleList(conv_norm(input_shape[f].channels, out_channels, 1, norm) for f in self.in_features)
        self.output_convs = nn.ModuleList(conv_norm(out_channels, out_channels, 3, norm) for _ in self.in_features)
        self.top_block, self.top_block_in, self.fuse = top_block, top_block_in, fuse
        self._shapes = {f"p{lv}": ShapeSpec(out_channels, 2**lv) for lv in self.levels}
        last = self.levels[-1]
        if top_block == "maxpool":
            self._shapes[f"p{last + 1}"] = ShapeSpec(out_channels, 2 ** (last + 1))
        elif top_block == "p6p7":
            cin = out_channels if top_block_in.startswith("p") else input_shape[top_block_in].channels
            self.p6 = nn.Conv2d(cin, out_channels, 3, stride=2, padding=1)
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            for m in (self.p6, self.p7):  # RetinaNet's init (Lin et al. 2017b)
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
            self._shapes[f"p{last + 1}"] = ShapeSpec(out_channels, 2 ** (last + 1))
            self._shapes[f"p{last + 2}"] = ShapeSpec(out_channels, 2 ** (last + 2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in (getattr(self, "p6", None), getattr(self, "p7", None)):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    @property
    def size_divisibility(self) -> int:
        return max(s.stride for s in self._shapes.values())

    def output_shape(self) -> dict[str, ShapeSpec]:
        """{"p2": ShapeSpec(256, 4), ...} for every output level."""
        return dict(self._shapes)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone features -> {"p{k}": [B, out_channels, H/2^k, W/2^k]}."""
        xs = [feats[f] for f in self.in_features]
        prev = self.lateral_convs[-1](xs[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(xs) - 2, -1, -1):
            lateral = self.lateral_convs[i](xs[i])
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down if self.fuse == "sum" else (lateral + top_down) / 2
            outs.insert(0, self.output_convs[i](prev))
        result = {f"p{lv}": o for lv, o in zip(self.levels, outs)}
        last = self.levels[-1]
        if self.top_block == "maxpool":
            result[f"p{last + 1}"] = F.max_pool2d(outs[-1], kernel_size=1, stride=2)
        elif self.top_block == "p6p7":
            src = outs[-1] if self.top_block_in.startswith("p") else feats[self.top_block_in]
            p6 = self.p6(src)
            result[f"p{last + 1}"] = p6
            result[f"p{last + 2}"] = self.p7(F.relu(p6))
        return result
