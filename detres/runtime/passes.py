"""The named runtime passes. Each finds modules by type in a built, eval-mode model, rewrites them
(a new runtime module put in the child's place on its parent, sharing its Parameters), returns how
many it rewrote, and states in its docstring the numerical contract that ``tests/runtime`` checks
with the pass on and off. The root module itself is never replaced."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from detres.modeling.heads.roi_heads import ConvFCHead, GatherRoIAlign, MultiScaleRoIAlign
from detres.modeling.layers.ms_deform_attn import MSDeformAttn
from detres.modeling.heads.rpn import RPN
from detres.modeling.necks import FPN, ChannelMapper
from detres.runtime.convs import (
    PointwiseConv2d,
    WinogradConv2d,
    fold_conv_bn,
    is_foldable_norm,
    is_pointwise,
    is_winograd_candidate,
)
from detres.runtime.deform_attn import GatherMSDeformAttn
from detres.runtime.dense import FrozenDense
from detres.runtime.heads import ONEDNN_LINEAR, HWCFlattenBoxHead, OneDNNLinear
from detres.runtime.rep_vgg import FusedRepVggBlock, is_fusable


def replace_modules(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> int:
    """Put ``make(child)`` in the place of every descendant ``child`` of ``model`` for which ``match``
    holds (a module shared by several parents is made once); returns how many were replaced."""
    made: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in made and match(child):
                made[id(child)] = make(child)
            if id(child) in made:
                setattr(parent, name, made[id(child)])
    return len(made)


def _conv_partner(name: str, children: dict[str, nn.Module], order: list[str]) -> str | None:
    """Name of the conv a norm named ``name`` is applied to: ``bnK`` -> ``convK`` (torchvision's
    ResNet), ``norm`` -> ``conv``, and in a Sequential (digit names) the child just before it."""
    m = re.fullmatch(r"bn(\d*)", name)
    if m and f"conv{m.group(1)}" in children:
        return f"conv{m.group(1)}"
    if name == "norm" and "conv" in children:
        return "conv"
    i = order.index(name)
    if i > 0 and name.isdigit() and isinstance(children[order[i - 1]], nn.Conv2d):
        return order[i - 1]
    return None


@torch.no_grad()
def rep_vgg(model: nn.Module) -> int:
    """Every ``RepVggBlock`` (RT-DETR's CCFF) -> ``FusedRepVggBlock``: its 3x3 conv + BN and 1x1 conv + BN
    branches merged into one 3x3 conv with a bias (RepVGG's re-parameterization, Ding et al. 2021).

    Contract: one convolution instead of two summed ones, the fused weights computed in float64 and
    rounded once: block outputs within relative 1e-5 of the reference (float32 reassociation), neck
    features within relative 1e-4. Traceable (ONNX, ``torch.export``). Runs before ``fold_bn``, so the
    later passes (``pointwise``, ``winograd``) see the fused plain ``nn.Conv2d``.
    """
    return replace_modules(model, is_fusable, FusedRepVggBlock.from_block)


@torch.no_grad()
def fold_bn(model: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d / eval-mode BatchNorm2d applied to a conv's output into that conv
    (weight scaled, bias added); the norm becomes ``nn.Identity``.

    Contract: outputs equal the reference to float32 rounding (relative 1e-5 per folded conv;
    detections matched within 1e-3 of the box scale). Traceable (ONNX, ``torch.export``). Pairs are
    found by module type plus torchvision's naming (``convK``/``bnK``, ``conv``/``norm``, Sequential
    order), the layout of every detres conv+norm; a norm whose channel count differs is left alone.
    """
    count = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        order = list(children)
        for name, child in children.items():
            if not is_foldable_norm(child):
                continue
            partner = _conv_partner(name, children, order)
            conv = children.get(partner) if partner else None
            if isinstance(conv, nn.Sequential) and len(conv) and isinstance(conv[-1], nn.Conv2d):
                conv = conv[-1]  # ResNet-vd's deep stem: conv1 = Sequential(conv, bn, relu, ..., conv), then bn1
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != child.running_mean.numel():
                continue
            fold_conv_bn(conv, child)
            setattr(module, name, nn.Identity())
            count += 1
    return count


def channels_last(model: nn.Module) -> int:
    """NHWC (channels-last) 4-D weights, so oneDNN (CPU) and cuDNN (GPU) pick their NHWC kernels, and
    every ``ConvFCHead`` with FC layers -> ``HWCFlattenBoxHead`` (flatten in (R, R, C) order with the
    first FC's columns permuted, a free view of a channels-last pooled input).

    Contract: the same maths in another memory order; outputs equal to float32 reassociation
    (relative 1e-5). Returns the number of 4-D weights converted plus box heads replaced.
    """
    n = sum(1 for p in model.parameters() if p.dim() == 4)
    model.to(memory_format=torch.channels_last)
    heads = replace_modules(model, lambda m: type(m) is ConvFCHead and len(m.fcs) > 0, HWCFlattenBoxHead)
    return n + heads


def pointwise(model: nn.Module) -> int:
    """Every plain 1x1 ``nn.Conv2d`` -> ``PointwiseConv2d`` (oneDNN called directly on channels-last
    CPU input; one GEMM otherwise). Contract: equal to the conv to float32 reassociation (relative 1e-5)."""
    return replace_modules(model, is_pointwise, PointwiseConv2d.from_conv)


def onednn_linear(model: nn.Module) -> int:
    """Every plain ``nn.Linear`` -> ``OneDNNLinear`` (oneDNN's inner product on CPU; 0 without oneDNN).
    ``nn.MultiheadAttention``'s projections are not plain ``nn.Linear`` and are left alone.
    Contract: equal to the layer to float32 reassociation (relative 1e-5)."""
    if not ONEDNN_LINEAR:
        return 0
    return replace_modules(model, lambda m: type(m) is nn.Linear, OneDNNLinear.from_linear)


# Readers of the FPN's outputs (its 3x3 output convs, the RPN head's convs, the pooler) are as fast
# on NCHW: Winograd convs inside them keep NNPACK's NCHW output instead of converting twice.
_NCHW_READERS = (FPN, ChannelMapper, RPN)


def winograd(model: nn.Module) -> int:
    """Every plain 3x3 stride-1 ``nn.Conv2d`` -> ``WinogradConv2d`` (Winograd on CPU where it pays:
    F(4x4, 3x3) as PyTorch GEMMs on maps up to about 90x90 with 128+ channels, NNPACK's F(6x6, 3x3) on
    larger ones; the direct convolution elsewhere).

    Contract: relative error about 1e-5 per conv (Winograd transforms in float32) instead of about
    1e-6; features within relative 1e-4, detections matched within 1e-3 of the box scale.
    """
    nchw = {id(m) for r in model.modules() if isinstance(r, _NCHW_READERS) for m in r.modules()}
    return replace_modules(model, is_winograd_candidate,
                           lambda conv: WinogradConv2d.from_conv(conv, keep_nchw=id(conv) in nchw))


def roi_align_rows(model: nn.Module) -> int:
    """Every ``MultiScaleRoIAlign`` -> ``GatherRoIAlign`` (RoIAlign as a weighted gather of NHWC pixel
    rows; a CPU pass, skipped for models on other devices).

    Contract: pooled features equal ``torchvision.ops.roi_align``'s to float rounding (1e-5); the
    same levels and sample points. Detections match as sets; on random heads that amplify pooled
    values, boxes within 5e-2 px and scores within 1e-5 (``test_faster_rcnn_torchvision_equivalence``).
    """
    return replace_modules(model, lambda m: type(m) is MultiScaleRoIAlign, GatherRoIAlign.like)


def ms_deform_gather(model: nn.Module) -> int:
    """Every ``MSDeformAttn`` -> ``GatherMSDeformAttn`` (bilinear sampling of all levels as one
    ``embedding_bag`` over the value rows instead of ``grid_sample`` per level; same Parameters).

    Contract: sampled outputs within 1e-5 abs of ``grid_sample``'s (bilinear, zero padding,
    ``align_corners=False``) for unit-scale values on maps under 128 px, locations inside, on the
    border of or outside [0, 1] (the same taps; the bilinear and attention weights multiplied in
    another order); 2e-5 on the full-size 100x134 level, where float32 pixel coordinates themselves
    round by 1e-5 px (measured max 1.1e-5 to 1.6e-5 by ``tools/benchmark.py deform-attn``). Inference only (no gradient to the sampling
    locations). Traceable (``torch.export`` keeps the ``embedding_bag``; ONNX opset 17 gets Gather +
    ReduceSum per level). A CPU pass (not measured on CUDA): skipped for models on other devices.
    """
    return replace_modules(model, lambda m: type(m) is MSDeformAttn, GatherMSDeformAttn)


def jit_freeze(model: nn.Module) -> int:
    """A detector's ``backbone`` + ``neck`` -> ``FrozenDense`` (traced per input shape, frozen and
    optimized by TorchScript; ``neck`` becomes None). Contract: features within relative 1e-4."""
    if not isinstance(getattr(model, "backbone", None), nn.Module) or isinstance(model.backbone, FrozenDense):
        return 0
    model.backbone = FrozenDense(model.backbone, getattr(model, "neck", None))
    if hasattr(model, "neck"):
        model.neck = None
    return 1


def compile(model: nn.Module) -> int:  # noqa: A001 - the pass's name
    """``torch.compile`` of a detector's ``backbone`` and ``neck`` (the dense part; the heads have
    data-dependent shapes). Contract: features within relative 1e-4 (Inductor's reassociation)."""
    count = 0
    for name in ("backbone", "neck"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            setattr(model, name, torch.compile(sub, dynamic=True))
            count += 1
    return count


@dataclass(frozen=True)
class Pass:
    """A named pass: ``fn(model) -> count``; ``cpu_only`` passes are skipped on other devices;
    ``traceable`` ones keep the model exportable (ONNX, ``torch.export``)."""

    name: str
    fn: Callable[[nn.Module], int]
    cpu_only: bool = False
    traceable: bool = False

    @property
    def contract(self) -> str:
        """The pass's docstring: what it rewrites and the tolerance it keeps."""
        return self.fn.__doc__ or ""


# In the order ``optimize`` applies them (whatever order they are asked in).
PASSES: dict[str, Pass] = {p.name: p for p in (
    Pass("rep_vgg", rep_vgg, traceable=True),
    Pass("fold_bn", fold_bn, traceable=True),
    Pass("channels_last", channels_last),
    Pass("pointwise", pointwise, cpu_only=True),
    Pass("onednn_linear", onednn_linear, cpu_only=True),
    Pass("winograd", winograd, cpu_only=True),
    Pass("roi_align_rows", roi_align_rows, cpu_only=True),
    Pass("ms_deform_gather", ms_deform_gather, cpu_only=True, traceable=True),
    Pass("jit_freeze", jit_freeze),
    Pass("compile", compile),
)}

BACKENDS: dict[str, tuple[str, ...]] = {
    # What Predictor, demo and benchmark apply: the fastest measured CPU path.
    "cpu": ("rep_vgg", "fold_bn", "channels_last", "pointwise", "onednn_linear", "winograd", "roi_align_rows",
            "ms_deform_gather"),
    # Only passes that trace: the model ONNX / torch.export capture.
    # (ms_deform_gather traces too but is not here: in onnxruntime its Gather + ReduceSum graph is slower
    # than GridSample at the encoder's full size, 1.1 s vs 0.77 s; see docs/benchmarks.md.)
    "export": ("rep_vgg", "fold_bn"),
}
