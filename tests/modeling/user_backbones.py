"""A user's own backbones, as a user would write them outside detres (used by the pluggable tests).

``TinyBackbone`` is named in configs by its dotted path; ``UserRegisteredBackbone`` registers itself
under its class name when this module is imported (``custom_imports``).
"""
from __future__ import annotations

from torch import Tensor, nn

from detres.registry import BACKBONES
from detres.structures import ShapeSpec


class TinyBackbone(nn.Module):
    """Two stride-2 conv stages per level: outputs ``res2``..``res{1 + num_levels}``, ``width * 2^i`` channels."""

    def __init__(self, width: int = 8, num_levels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.stages = nn.ModuleList()
        self._shapes: dict[str, ShapeSpec] = {"res2": ShapeSpec(width, 4)}
        cin = width
        for i in range(1, num_levels):
            cout = width * 2**i
            self.stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()))
            self._shapes[f"res{i + 2}"] = ShapeSpec(cout, 2 ** (i + 2))
            cin = cout

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"res2": [B, w, H/4, W/4], "res3": [B, 2w, H/8, W/8], ...}."""
        x = self.stem(x)
        out = {"res2": x}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"res{i + 3}"] = x
        return out


@BACKBONES.register()
class UserRegisteredBackbone(TinyBackbone):
    """The same network, registered under its class name."""


class NotABackbone(nn.Module):
    """Lacks ``output_shape``: building it as a backbone must fail with a clear message."""

    def forward(self, x: Tensor) -> Tensor:
        return x
