"""RT-DETR's CCFF building blocks (Zhao et al. 2024, Sec. 4.2 and Fig. 5): conv + BN + activation,
the RepVGG block (Ding et al. 2021: a 3x3 and a 1x1 conv branch, each with BN, summed) and the
CSP layer that stacks RepVGG blocks on one half of the channels.

Module names equal the official RT-DETR code's (``conv``/``norm``; ``conv1``, ``conv2``,
``bottlenecks.{j}``, ``conv3``), so its checkpoints load unchanged. The blocks are the training form:
fusing a RepVGG block's two branches into one 3x3 conv for inference is the runtime pass ``rep_vgg``.
"""
from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = ("silu", "swish", "relu", "leaky_relu", "gelu", "hardsigmoid", "none")


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name (``silu``/``swish``, ``relu``, ``leaky_relu``, ``gelu``,
    ``hardsigmoid``; ``None`` or ``none`` = identity), as the official ``get_activation``."""
    key = "none" if name is None else name.lower()
    if key in ("silu", "swish"):
        return nn.SiLU()
    if key == "relu":
        return nn.ReLU()
    if key == "leaky_relu":
        return nn.LeakyReLU()
    if key == "gelu":
        return nn.GELU()
    if key == "hardsigmoid":
        return nn.Hardsigmoid()
    if key == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))``: a bias-free k x k conv (padding (k-1)//2), ``nn.BatchNorm2d`` and an
    activation (``None`` = identity). Keys ``conv.weight``, ``norm.{weight,bias,running_*}``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, act: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """[B, cin, H, W] -> [B, cout, ceil(H / stride), ceil(W / stride)]."""
        return self.act(self.norm(self.conv(x)))


class RepVggBlock(nn.Module):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)))`` with ``channels`` in and out (RepVGG's training form
    without the identity branch, as RT-DETR). Children ``conv1`` (3x3) and ``conv2`` (1x1)."""

    def __init__(self, channels: int, act: str | None = "silu") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3)
        self.conv2 = ConvNormAct(channels, channels, 1)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """CSP layer of RepVGG blocks (RT-DETR's fusion block): ``conv3(blocks(conv1(x)) + conv2(x))``.

    ``conv1``/``conv2`` are 1x1 conv + BN + act from ``in_channels`` to ``hidden = int(out_channels *
    expansion)``; ``num_blocks`` RepVggBlocks act on the ``conv1`` branch; ``conv3`` (1x1 + BN + act)
    maps ``hidden`` to ``out_channels``, or is ``nn.Identity`` (no keys) when they are equal.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: str | None = "silu") -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        if hidden < 1:
            raise ValueError(f"CSPRepLayer: expansion {expansion} gives {hidden} hidden channels for "
                             f"out_channels {out_channels}; use an expansion with int(out * expansion) >= 1")
        self.conv1 = ConvNormAct(in_channels, hidden, 1, act=act)
        self.conv2 = ConvNormAct(in_channels, hidden, 1, act=act)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden, act=act) for _ in range(num_blocks)))
        self.conv3: nn.Module = (ConvNormAct(hidden, out_channels, 1, act=act) if hidden != out_channels
                                 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_channels, H, W] -> [B, out_channels, H, W]."""
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))
