"""Runtime convolutions: BN folding, 1x1 convs on oneDNN / one GEMM, 3x3 convs by Winograd (GEMMs or NNPACK).

Each class is an ``nn.Conv2d`` subclass built from an existing conv by ``from_conv`` (sharing its
weight and bias Parameters); only ``forward`` differs. They are inference modules: folded norms are
gone and the fast paths skip autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.runtime.winograd import f43_conv2d, f43_filter

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


def is_foldable_norm(m: nn.Module) -> bool:
    """A FrozenBatchNorm2d, or a BatchNorm2d in eval mode with running statistics: a fixed affine map."""
    if isinstance(m, nn.BatchNorm2d):  # SyncBatchNorm subclasses BatchNorm's base, not BatchNorm2d
        return not m.training and m.track_running_stats and m.running_mean is not None
    return isinstance(m, FrozenBatchNorm2d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold ``bn`` (FrozenBatchNorm2d or eval BatchNorm2d over ``conv``'s outputs) into ``conv`` in place.

    ``bn(conv(x)) = conv(x; w * s) + (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``.
    """
    w = bn.weight if getattr(bn, "weight", None) is not None else torch.ones_like(bn.running_mean)
    b = bn.bias if getattr(bn, "bias", None) is not None else torch.zeros_like(bn.running_mean)
    scale = w * torch.rsqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = (conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    new_bias = (bias * scale + b).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def conv_like(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A ``cls`` with ``conv``'s hyper-parameters sharing its weight and bias Parameters."""
    new = skip_init(
        cls, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (no padding, one group) sent to the fastest kernel for its input.

    A channels-last float32 input on CPU goes to oneDNN's convolution directly (``F.conv2d`` routes
    batch-1 1x1 convs to a generic GEMM path instead, 10-50% slower here); an NCHW input is one
    [K, C] x [C, H*W] GEMM per image (``F.conv2d`` would first copy it to the weights' NHWC layout);
    elsewhere a channels-last input is viewed as [B, H, W, C] without a copy and multiplied in one
    GEMM. Strides subsample the input first, exactly what a strided 1x1 conv reads. Outputs keep the
    input's memory format.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseConv2d:
        return conv_like(cls, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        sh, sw = self.stride
        if (x.device.type == "cpu" and _MKLDNN and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last)):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), 1
            )
        if x.is_contiguous():  # NCHW: [K, C] @ [B, C, H*W]
            if sh > 1 or sw > 1:
                x = x[:, :, ::sh, ::sw].contiguous()
            y = torch.matmul(self.weight.flatten(1), x.flatten(2))
            if self.bias is not None:
                y.add_(self.bias[:, None])
            return y.view(x.shape[0], -1, *x.shape[2:])
        pixels = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1)
        if not pixels.is_contiguous():  # strided or oddly strided input: one copy, then a single GEMM
            pixels = pixels.contiguous()
        y = F.linear(pixels, self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


def is_pointwise(m: nn.Module) -> bool:
    """A plain 1x1 ``nn.Conv2d`` with no padding and one group."""
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding in ((0, 0), 0) and m.groups == 1
            and m.padding_mode == "zeros")


_NNPACK: list[bool] = []


def nnpack_ready() -> bool:
    """NNPACK present and initialized (``_nnpack_available`` runs its one-time init)."""
    if not _NNPACK:
        _NNPACK.append(bool(hasattr(torch, "_nnpack_available") and torch._nnpack_available()))
    return _NNPACK[0]


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1 ``nn.Conv2d`` computed by a Winograd algorithm on CPU where it pays.

    Winograd's minimal filtering (Lavin & Gray 2016) trades multiplications for cheap linear transforms
    of input tiles, filters and outputs, at a relative error of about 1e-5 (float32 rounding of the
    transforms) instead of about 1e-6. Two implementations, picked per input by measured rules (on the
    development CPU, docs/benchmarks.md):

    - F(4x4, 3x3) as PyTorch GEMMs (``detres.runtime.winograd``; 36 instead of 144 multiplications per
      4x4 tile) where both channel counts reach ``gemm_min_channels`` and the direct convolution would
      cost at least ``gemm_min_flops``: 0.55-0.65x of oneDNN's direct convolution for 256-512 channels
      on maps up to 80x80, and it runs on PyTorch's own threads. Its output is channels-last. The
      transformed filters (4x the weight) are computed at first use and again whenever the weight
      changes in place.
    - NNPACK's F(6x6, 3x3) on larger maps (over ``gemm_max_pixels`` output pixels, where NNPACK is
      present): 0.4-0.5x of the direct convolution there. NNPACK reads and writes NCHW: a channels-last
      input is converted, and the output is converted back unless ``keep_nchw`` (set where every reader
      of the output is as fast on NCHW: the FPN's output convs and the RPN head). Conversions cost more
      than Winograd saves on a channels-last input with fewer than ``min_channels`` channels, and the
      transforms more than they save on maps under ``min_pixels``.

    Everything else (small maps or few channels, other devices and dtypes, autograd) uses the ordinary
    convolution.
    """

    min_pixels = 512
    min_channels = 128
    gemm_min_channels = 128
    gemm_min_flops = 1e9
    gemm_max_pixels = 8192
    keep_nchw = False

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, keep_nchw: bool = False) -> WinogradConv2d:
        new = conv_like(cls, conv)
        new.weight.data = new.weight.data.contiguous()  # NNPACK reads OIHW
        new.keep_nchw = keep_nchw
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32
                or torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        path = self.path(x)
        if path == "gemm":
            return f43_conv2d(x, self.f43_filter(), self.bias, self.padding)
        if path == "nnpack":
            return self._nnpack(x)
        return super().forward(x)

    def _nnpack(self, x: torch.Tensor) -> torch.Tensor:
        nchw = x.is_contiguous()
        x = x if nchw else _channels_last_to_nchw(x)
        w, pad = self.weight.contiguous(), list(self.padding)
        # One image per call: NNPACK's batch-1 inference path; for B > 1 PyTorch calls its batched
        # (training) path, 3-4x slower per image here.
        ys = [torch._nnpack_spatial_convolution(x[i:i + 1], w, self.bias, pad, [1, 1]) for i in range(x.shape[0])]
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        return y if nchw or self.keep_nchw else y.contiguous(memory_format=torch.channels_last)

    def path(self, x: torch.Tensor) -> str:
        """``"gemm"`` (F(4x4, 3x3) in PyTorch), ``"nnpack"`` or ``"direct"`` for a CPU float32 input ``x``."""
        c, h, w = x.shape[1:]
        pixels = (h + 2 * self.padding[0] - 2) * (w + 2 * self.padding[1] - 2)
        nnpack = (nnpack_ready() and pixels >= self.min_pixels
                  and (x.is_contiguous() or c >= self.min_channels))
        if (min(c, self.out_channels) >= self.gemm_min_channels
                and 18 * c * self.out_channels * pixels >= self.gemm_min_flops
                and not (nnpack and pixels > self.gemm_max_pixels)):
            return "gemm"
        return "nnpack" if nnpack else "direct"

    def f43_filter(self) -> torch.Tensor:
        """The weight's F(4x4, 3x3) transform, cached until the weight changes (in place, or replaced).
        A weight made under ``torch.inference_mode`` keeps no version counter: only a new tensor counts."""
        version = None if self.weight.is_inference() else self.weight._version
        key = (self.weight.data_ptr(), version)
        if getattr(self, "_f43", None) is None or self._f43[0] != key:
            self._f43 = (key, f43_filter(self.weight))
        return self._f43[1]


def is_winograd_candidate(m: nn.Module) -> bool:
    """A plain 3x3 stride-1 undilated ``nn.Conv2d`` with one group and explicit zero padding."""
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.groups == 1 and m.padding_mode == "zeros" and isinstance(m.padding, tuple))


def _channels_last_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """NCHW copy of a channels-last [B, C, H, W] tensor: per image a 2-D [H*W, C] -> [C, H*W]
    transpose, which PyTorch copies in cache-sized blocks (``x.contiguous()`` takes its generic
    strided path here, twice as slow)."""
    b, c, h, w = x.shape
    out = torch.empty((b, c, h, w), dtype=x.dtype, device=x.device)
    for i in range(b):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out
