"""Inference speed-ups that keep a model's outputs within float tolerance.

- ``fold_frozen_bn``: a frozen (or eval-mode) BatchNorm after a conv is an affine map per channel,
  so it folds into the conv's weight and bias: w' = w * g / sqrt(v + eps), b' = (b - m) * g /
  sqrt(v + eps) + beta; the norm becomes ``nn.Identity``. Saves one full pass over every feature map.
- ``channels_last``: NHWC weights let oneDNN (CPU) and cuDNN (GPU) pick their fastest kernels; 1x1
  convolutions become ``PointwiseConv2d`` (oneDNN called directly on CPU, one GEMM over the NHWC
  pixels elsewhere), because PyTorch sends a single-threaded batch-1 1x1 convolution to its generic
  im2col path, whose bias broadcast and layout conversions cost more than the GEMM itself; the RoI
  pooler gathers NHWC pixel rows (``roi_align_rows``) instead of torchvision's NCHW kernel.
- ``jit_freeze``: backbone + neck traced per input shape, frozen and optimized by TorchScript
  (oneDNN prepacked convolutions with fused ReLU/add on CPU; ``FrozenDense``).
- ``compile``: ``torch.compile`` of the backbone and neck (the dense part; the heads have
  data-dependent shapes).

``optimize_for_inference(model)`` applies them; the benchmark tool, the exporter and ``Predictor``
call it. The model must not be trained afterwards (folded norms no longer exist).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.modeling.heads.roi_heads.pooler import MultiScaleRoIAlign

_BN_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d)
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


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
    place). On CPU it calls oneDNN's convolution directly (``F.conv2d`` routes batch-1 1x1 convs to a
    generic GEMM path instead, 10-50% slower here). Elsewhere, a channels_last input is viewed as
    [B, H, W, C] without a copy and multiplied in one GEMM; strides subsample the input first,
    exactly what a strided 1x1 conv reads. Outputs keep the input's memory format.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        if x.device.type == "cpu" and _MKLDNN and x.dtype == torch.float32:
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), 1
            )
        sh, sw = self.stride
        pixels = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1)
        if not pixels.is_contiguous():  # strided or NCHW input: one copy, then a single GEMM
            pixels = pixels.contiguous()
        y = F.linear(pixels, self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


def to_pointwise(model: nn.Module) -> int:
    """Turn every plain 1x1 ``nn.Conv2d`` of ``model`` into a ``PointwiseConv2d`` in place; returns the count."""
    count = 0
    for m in model.modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding in ((0, 0), 0) and m.groups == 1
                and m.padding_mode == "zeros"):
            m.__class__ = PointwiseConv2d
            count += 1
    return count


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
    model: nn.Module, *, fold_bn: bool = True, channels_last: bool = False, compile: bool = False,
    jit_freeze: bool = False,
) -> nn.Module:
    """Eval mode, no gradients, folded norms; optionally NHWC weights and a compiled backbone/neck.

    Returns the same module (changed in place). Outputs stay within float tolerance of the original.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_frozen_bn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        to_pointwise(model)
        for m in model.modules():
            if isinstance(m, MultiScaleRoIAlign):
                m.nhwc = True
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
