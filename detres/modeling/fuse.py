"""Inference speed-ups that keep a model's outputs within float tolerance.

- ``fold_frozen_bn``: a frozen (or eval-mode) BatchNorm after a conv is an affine map per channel,
  so it folds into the conv's weight and bias: w' = w * g / sqrt(v + eps), b' = (b - m) * g /
  sqrt(v + eps) + beta; the norm becomes ``nn.Identity``. Saves one full pass over every feature map.
- ``channels_last``: NHWC weights let oneDNN (CPU) and cuDNN (GPU) pick their fastest kernels; 1x1
  convolutions become ``PointwiseConv2d`` (oneDNN called directly on CPU, one GEMM over the NHWC
  pixels elsewhere), because PyTorch sends a single-threaded batch-1 1x1 convolution to its generic
  im2col path, whose bias broadcast and layout conversions cost more than the GEMM itself; the box
  head flattens the (channels-last) pooled features in (R, R, C) order, its first FC's columns
  permuted to match, and linear layers call oneDNN on CPU (``OneDNNLinear``).
- ``winograd``: 3x3 stride-1 convs through NNPACK's Winograd F(6x6, 3x3) kernels on CPU
  (``WinogradConv2d``), 2-3x faster than direct convolution at about 1e-5 relative error.
- ``jit_freeze``: backbone + neck traced per input shape, frozen and optimized by TorchScript
  (oneDNN prepacked convolutions with fused ReLU/add on CPU; ``FrozenDense``).
- ``compile``: ``torch.compile`` of the backbone and neck (the dense part; the heads have
  data-dependent shapes).

``optimize_for_inference(model)`` applies them; the benchmark tool, the exporter and ``Predictor``
call it. The model must not be trained afterwards (folded norms no longer exist).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.modeling.heads.roi_heads.box_head import ConvFCHead

_BN_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d)
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _is_foldable_bn(m: nn.Module) -> bool:
    if isinstance(m, nn.BatchNorm2d):  # SyncBatchNorm subclasses BatchNorm's base, not BatchNorm2d
        return not m.training and m.track_running_stats and m.running_mean is not None
    return isinstance(m, FrozenBatchNorm2d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold ``bn`` (FrozenBatchNorm2d or eval BatchNorm2d over conv's outputs) into ``conv`` in place."""
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


def _conv_partner(name: str, children: dict[str, nn.Module], order: list[str]) -> str | None:
    """Name of the conv a norm named ``name`` follows: ``bnK`` -> ``convK``, ``downsample.1`` ->
    ``.0`` (Sequential order), ``norm`` -> ``conv``."""
    m = re.fullmatch(r"bn(\d*)", name)
    if m and f"conv{m.group(1)}" in children:
        return f"conv{m.group(1)}"
    if name == "norm" and "conv" in children:
        return "conv"
    i = order.index(name)
    if i > 0 and isinstance(children[order[i - 1]], nn.Conv2d) and name.isdigit():
        return order[i - 1]
    return None


def fold_frozen_bn(model: nn.Module) -> int:
    """Fold every frozen / eval BatchNorm that directly follows a conv into it; returns the count.

    Pairs are found by torchvision's names (``convK``/``bnK``, Sequential ``.0``/``.1``), so only
    norms applied right after their conv are folded.
    """
    count = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        order = list(children)
        for name, child in children.items():
            if not isinstance(child, _BN_TYPES) or not _is_foldable_bn(child):
                continue
            partner = _conv_partner(name, children, order)
            conv = children.get(partner) if partner else None
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != child.running_mean.numel():
                continue
            fold_conv_bn(conv, child)
            setattr(module, name, nn.Identity())
            count += 1
    return count


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (no padding, one group) sent to the fastest kernel for its device.

    Same parameters and state dict as the conv it replaces (``to_pointwise`` swaps the class in
    place). A channels-last input on CPU goes to oneDNN's convolution directly (``F.conv2d`` routes
    batch-1 1x1 convs to a generic GEMM path instead, 10-50% slower here); an NCHW input is one
    [K, C] x [C, H*W] GEMM per image (``F.conv2d`` would first copy it to the weights' NHWC layout);
    elsewhere a channels-last input is viewed as [B, H, W, C] without a copy and multiplied in one
    GEMM. Strides subsample the input first, exactly what a strided 1x1 conv reads. Outputs keep the
    input's memory format.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        sh, sw = self.stride
        if (x.device.type == "cpu" and _MKLDNN and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last)):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), 1
            )
        if x.is_contiguous():  # NCHW: [K, C] @ [B, C, H*W] (F.conv2d would first convert to the weights' NHWC)
            if sh > 1 or sw > 1:
                x = x[:, :, ::sh, ::sw].contiguous()
            y = torch.matmul(self.weight.flatten(1), x.flatten(2))
            if self.bias is not None:
                y.add_(self.bias[:, None])
            return y.view(x.shape[0], -1, *x.shape[2:])
        pixels = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1)
        if not pixels.is_contiguous():  # strided or NCHW input: one copy, then a single GEMM
            pixels = pixels.contiguous()
        y = F.linear(pixels, self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


def _swap_class(model: nn.Module, base: type[nn.Module], new: type[nn.Module], match: Callable[[Any], bool]) -> int:
    """Give every module of exact type ``base`` for which ``match`` holds the subclass ``new`` (same
    parameters, buffers and state dict; only ``forward`` changes); returns the count."""
    count = 0
    for m in model.modules():
        if type(m) is base and match(m):
            m.__class__ = new
            count += 1
    return count


def to_pointwise(model: nn.Module) -> int:
    """Turn every plain 1x1 ``nn.Conv2d`` of ``model`` into a ``PointwiseConv2d`` in place; returns the count."""
    return _swap_class(model, nn.Conv2d, PointwiseConv2d, lambda m: (
        m.kernel_size == (1, 1) and m.padding in ((0, 0), 0) and m.groups == 1 and m.padding_mode == "zeros"))


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1 ``nn.Conv2d`` computed by NNPACK's Winograd F(6x6, 3x3) kernels on CPU.

    Winograd's minimal filtering (Lavin & Gray 2016) does a 3x3 convolution with 64 instead of 324
    multiplications per 6x6 output tile; on this project's CPU that is 2-3x faster than oneDNN's
    direct convolution for 128-512 channels, at a relative error of about 1e-5 (float32 rounding of
    the transforms) instead of about 1e-6. NNPACK reads and writes NCHW: a channels-last input is
    converted, and the output is converted back unless ``keep_nchw`` (set where every reader of
    the output is as fast on NCHW: the FPN's output convs and the RPN head). Conversions cost more
    than Winograd saves on a channels-last input with fewer than ``min_channels`` channels, and the
    transforms more than they save on maps under ``min_pixels``: those, other devices and dtypes,
    and autograd use the ordinary convolution. Same parameters and state dict as the conv it
    replaces (``to_winograd``).
    """

    min_pixels = 512
    min_channels = 128
    keep_nchw = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32 or not _nnpack_ready()
                or x.shape[-1] * x.shape[-2] < self.min_pixels
                or torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        nchw = x.is_contiguous()
        if not nchw and x.shape[1] < self.min_channels:
            return super().forward(x)
        x = x if nchw else _channels_last_to_nchw(x)
        w, pad = self.weight.contiguous(), list(self.padding)
        # One image per call: NNPACK's batch-1 inference path; for B > 1 PyTorch calls its batched
        # (training) path, 3-4x slower per image here.
        ys = [torch._nnpack_spatial_convolution(x[i:i + 1], w, self.bias, pad, [1, 1]) for i in range(x.shape[0])]
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        return y if nchw or self.keep_nchw else y.contiguous(memory_format=torch.channels_last)


def _channels_last_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """NCHW copy of a channels-last [B, C, H, W] tensor: per image a 2-D [H*W, C] -> [C, H*W]
    transpose, which PyTorch copies in cache-sized blocks (``x.contiguous()`` takes its generic
    strided path here, twice as slow)."""
    b, c, h, w = x.shape
    out = torch.empty((b, c, h, w), dtype=x.dtype, device=x.device)
    for i in range(b):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


_NNPACK: list[bool] = []


def _nnpack_ready() -> bool:
    """NNPACK present and initialized (``_nnpack_available`` runs its one-time init)."""
    if not _NNPACK:
        _NNPACK.append(bool(hasattr(torch, "_nnpack_available") and torch._nnpack_available()))
    return _NNPACK[0]


def to_winograd(model: nn.Module) -> int:
    """Turn every plain 3x3 stride-1 ``nn.Conv2d`` (one group, zero padding) of ``model`` into a
    ``WinogradConv2d`` in place; returns the count (0 when NNPACK is not available)."""
    if not _nnpack_ready():
        return 0
    count = _swap_class(model, nn.Conv2d, WinogradConv2d, lambda m: (
        m.kernel_size == (3, 3) and m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1
        and m.padding_mode == "zeros" and isinstance(m.padding, tuple)))
    for m in model.modules():
        if isinstance(m, WinogradConv2d):
            m.weight.data = m.weight.data.contiguous()  # NNPACK reads OIHW
    return count


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` that calls oneDNN's inner product on CPU (float32, no autograd): 10-25% faster
    than MKL's GEMM behind ``F.linear`` for the box head's FCs and DETR's FFNs on this machine.

    Same parameters and state dict as the layer it replaces (``to_onednn_linear`` swaps the class).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not self.weight.requires_grad:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


def to_onednn_linear(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into a ``OneDNNLinear`` in place; returns the count."""
    return _swap_class(model, nn.Linear, OneDNNLinear, lambda m: True) if _ONEDNN_LINEAR else 0


class FrozenDense(nn.Module):
    """Backbone + neck traced, frozen and ``torch.jit.optimize_for_inference``-d once per input shape
    (oneDNN prepacked weights, fused conv+ReLU/add on CPU). ``forward`` returns the neck's dict.

    Shapes are cached (at most ``max_shapes``, oldest dropped): each new padded size costs a trace.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None, max_shapes: int = 8) -> None:
        super().__init__()
        self.backbone, self.neck, self.max_shapes = backbone, neck, max_shapes
        self._cache: dict[tuple[int, ...], torch.jit.ScriptModule] = {}
        self.size_divisibility = getattr(backbone, "size_divisibility", 0)

    def _dense(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats

    def output_shape(self) -> dict:
        return (self.neck if self.neck is not None else self.backbone).output_shape()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return self._dense(x)  # traced graphs are for inference only
        key = (*x.shape, x.dtype, x.device)
        fn = self._cache.get(key)
        if fn is None:
            if len(self._cache) >= self.max_shapes:
                self._cache.pop(next(iter(self._cache)))
            with torch.inference_mode(False), torch.no_grad():
                wrapper = _DenseModule(self.backbone, self.neck).eval()
                traced = torch.jit.trace(wrapper, x.clone(), strict=False, check_trace=False)
                fn = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            self._cache[key] = fn
        return fn(x)


class _DenseModule(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module | None) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats


def optimize_for_inference(
    model: nn.Module, *, fold_bn: bool = True, channels_last: bool = False, winograd: bool = False,
    compile: bool = False, jit_freeze: bool = False,
) -> nn.Module:
    """Eval mode, no gradients, folded norms; optionally NHWC weights with the CPU kernels that go
    with them (``channels_last``), Winograd 3x3 convs (``winograd``), a compiled or frozen
    backbone/neck.

    Returns the same module (changed in place). Outputs stay within float tolerance of the original
    (relative 1e-6 per layer; 1e-5 for Winograd convs). ``channels_last`` and ``winograd`` swap in
    oneDNN / NNPACK calls that ONNX and ``torch.export`` cannot trace: exporters use the defaults.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_frozen_bn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        to_pointwise(model)
        to_onednn_linear(model)
        for m in model.modules():
            if isinstance(m, ConvFCHead):  # the CPU pooler's output is channels-last
                m.flatten_channels_last()
    if winograd:
        to_winograd(model)
        # The FPN's outputs feed the RPN's 3x3 conv (NNPACK again), its 1x1 convs and the RoI
        # pooler, all as fast on NCHW: leave them NCHW instead of converting twice.
        for name in ("neck", "rpn"):
            for m in getattr(model, name, nn.Module()).modules():
                if isinstance(m, WinogradConv2d):
                    m.keep_nchw = True
    if jit_freeze and hasattr(model, "backbone"):
        # The detectors call ``self.backbone`` then ``self.neck`` (when not None): the frozen graph
        # takes both places.
        model.backbone = FrozenDense(model.backbone, getattr(model, "neck", None))
        if hasattr(model, "neck"):
            model.neck = None
    if compile:
        for name in ("backbone", "neck"):
            sub = getattr(model, name, None)
            if sub is not None:
                setattr(model, name, torch.compile(sub, dynamic=True))
    return model
