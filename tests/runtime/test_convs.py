"""The runtime modules on their own: folded conv, 1x1 convs on oneDNN / GEMM, Winograd 3x3 convs,
oneDNN linear layers, and the child replacement every pass uses."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.runtime import passes
from detres.runtime import convs
from detres.runtime.convs import PointwiseConv2d, WinogradConv2d, fold_conv_bn
from detres.runtime.heads import OneDNNLinear
from tests.runtime.models import random_stats

NNPACK = pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch build has no NNPACK")


def test_fold_conv_bn_matches_conv_then_bn() -> None:
    torch.manual_seed(0)
    for bias in (False, True):
        conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=bias), FrozenBatchNorm2d(6)
        random_stats(bn)
        x = torch.randn(2, 4, 9, 7)
        ref = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert conv.bias is not None
        torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_eval_batchnorm_folds_but_training_one_does_not() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5))
    seq[1].running_mean.normal_()
    seq.train()
    assert passes.fold_bn(seq) == 0
    seq.eval()
    x = torch.randn(1, 3, 4, 4)
    ref = seq(x)
    assert passes.fold_bn(seq) == 1 and isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(seq(x), ref, atol=1e-5, rtol=1e-5)


def test_fold_bn_leaves_norms_not_after_a_conv() -> None:
    """A norm after a non-conv (here a ReLU) or named unlike its conv is not folded."""
    seq = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(), FrozenBatchNorm2d(5)).eval()
    assert passes.fold_bn(seq) == 0 and isinstance(seq[2], FrozenBatchNorm2d)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_equals_conv2d(stride: int, bias: bool, channels_last: bool) -> None:
    """A 1x1 conv on oneDNN / as a GEMM equals nn.Conv2d, strided or not, NCHW or NHWC input."""
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1, stride=stride, bias=bias)
    model = nn.Sequential(conv, nn.Conv2d(40, 8, 3, padding=1))
    x = torch.randn(2, 24, 17, 23)
    expected = model(x)
    assert passes.pointwise(model) == 1 and type(model[0]) is PointwiseConv2d and type(model[1]) is nn.Conv2d
    assert model[0].weight is conv.weight  # the replacement shares the Parameters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model[0](x)
        assert out.shape == (2, 40, -(-17 // stride), -(-23 // stride))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@NNPACK
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("keep_nchw", [True, False])
def test_winograd_conv_equals_conv2d(channels_last: bool, keep_nchw: bool) -> None:
    """NNPACK's Winograd path agrees with nn.Conv2d to float32 Winograd rounding; output layout as documented."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 64, 3, padding=1), nn.Conv2d(64, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False))
    x = torch.randn(2, 128, 30, 41)
    with torch.no_grad():
        ref = model[0](x)
    assert passes.winograd(model) == 2 and type(model[1]) is nn.Conv2d  # strided: left alone
    assert type(model[0]) is WinogradConv2d and type(model[2]) is WinogradConv2d
    model[0].keep_nchw = keep_nchw
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model[0](x)
    assert out.is_contiguous(memory_format=torch.channels_last) == (channels_last and not keep_nchw)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    assert not torch.equal(out, ref)  # Winograd, not the direct convolution


@NNPACK
def test_winograd_conv_falls_back_where_it_does_not_pay_or_cannot_run() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 16, 3, padding=1))
    small, few = torch.randn(1, 64, 16, 20), torch.randn(1, 64, 40, 40).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        refs = [model(small), model(few)]
    assert passes.winograd(model) == 1
    with torch.no_grad():
        assert torch.equal(model(small), refs[0])  # 320 pixels < min_pixels
        assert torch.equal(model(few), refs[1])  # channels-last with 64 < min_channels: conversions would cost more
    x = torch.randn(1, 64, 40, 40, requires_grad=True)
    model(x).sum().backward()  # autograd: the ordinary convolution (NNPACK's op has no backward here)
    assert x.grad is not None and model[0].weight.grad is not None


def test_winograd_conv_takes_the_gemm_path_on_mid_size_maps_with_many_channels(monkeypatch) -> None:
    """128+ channels and >= 1 GFLOP of direct convolution: F(4x4, 3x3) GEMMs, with or without NNPACK;
    the transformed filters follow in-place weight changes; small maps keep the direct convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    x, small = torch.randn(1, 128, 64, 64), torch.randn(1, 128, 16, 16)
    with torch.no_grad():
        ref, ref_small = conv(x), conv(small)
    fast = WinogradConv2d.from_conv(conv)
    assert fast.path(x) == "gemm" and fast.path(small) == "direct"
    monkeypatch.setattr(convs, "_NNPACK", [False])
    assert fast.path(x) == "gemm"
    with torch.no_grad():
        out = fast(x)
        assert out.is_contiguous(memory_format=torch.channels_last) and not torch.equal(out, ref)
        assert float((out - ref).abs().max() / ref.abs().max()) < 2e-5
        assert torch.equal(fast(small), ref_small)
        fast.weight.mul_(2)
        doubled = 2 * ref - conv.bias[:, None, None]
        assert float((fast(x) - doubled).abs().max() / doubled.abs().max()) < 2e-5


def test_winograd_conv_built_under_inference_mode() -> None:
    """Inference-mode weights have no version counter: the filter cache keys on the tensor alone."""
    with torch.inference_mode():
        conv = nn.Conv2d(128, 128, 3, padding=1)
        fast, x = WinogradConv2d.from_conv(conv), torch.randn(1, 128, 64, 64)
        ref, out = conv(x), fast(x)
    assert fast.path(x) == "gemm" and float((out - ref).abs().max() / ref.abs().max()) < 2e-5


@NNPACK
def test_winograd_conv_leaves_large_maps_to_nnpack() -> None:
    fast = WinogradConv2d.from_conv(nn.Conv2d(128, 128, 3, padding=1))
    assert fast.path(torch.randn(1, 128, 100, 100)) == "nnpack"


def test_onednn_linear_equals_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5, bias=False))
    x = torch.randn(7, 3, 48)
    ref = model(x)
    n = passes.onednn_linear(model)
    model.requires_grad_(False)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x.transpose(0, 1)), ref.transpose(0, 1), rtol=1e-5, atol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert n == 2 and [type(m) for m in model] == [OneDNNLinear, nn.ReLU, OneDNNLinear]


def test_replace_modules_makes_a_shared_child_once() -> None:
    shared = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared), nn.Conv2d(4, 4, 3))
    assert passes.replace_modules(model, passes.is_pointwise, PointwiseConv2d.from_conv) == 1
    assert model[0][0] is model[1][0] and type(model[0][0]) is PointwiseConv2d and type(model[2]) is nn.Conv2d
