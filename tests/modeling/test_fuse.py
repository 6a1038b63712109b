"""optimize_for_inference: folded frozen BN, channels_last, 1x1 convs as GEMMs; outputs within float tolerance."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.config import load_config
from detres.modeling.build import build_model
from detres.modeling.backbones.norm import conv_norm
from detres.modeling.fuse import (
    OneDNNLinear,
    PointwiseConv2d,
    WinogradConv2d,
    fold_conv_bn,
    fold_frozen_bn,
    optimize_for_inference,
    to_onednn_linear,
    to_pointwise,
    to_winograd,
)

R18 = "configs/faster_rcnn/faster_rcnn_r18_fpn_1x_coco.yaml"


def _random_stats(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_fold_conv_bn_matches_conv_then_bn() -> None:
    torch.manual_seed(0)
    for bias in (False, True):
        conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=bias), FrozenBatchNorm2d(6)
        _random_stats(bn)
        x = torch.randn(2, 4, 9, 7)
        ref = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert conv.bias is not None
        torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_eval_batchnorm_folds_but_training_one_does_not() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5))
    seq[1].running_mean.normal_()
    seq.train()
    assert fold_frozen_bn(seq) == 0
    seq.eval()
    x = torch.randn(1, 3, 4, 4)
    ref = seq(x)
    assert fold_frozen_bn(seq) == 1 and isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(seq(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("winograd", [False, True])
def test_optimized_faster_rcnn_gives_same_detections(winograd: bool) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(R18, ["model.input.min_size_test=160", "model.input.max_size_test=256"])).eval()
    with torch.no_grad():
        _random_stats(model)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
    n_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 120, 150), generator=g, dtype=torch.uint8) for _ in range(2)]
    with torch.inference_mode():
        ref = model(images)
        feats_ref = model.features(model.preprocess(images).tensor)
    optimize_for_inference(model, channels_last=True, winograd=winograd)
    assert model.roi_heads.box_head.channels_last_flatten
    assert any(isinstance(m, WinogradConv2d) for m in model.modules()) == (winograd and torch._nnpack_available())
    assert n_bn == 20  # ResNet-18: bn1 + 2 per block x 8 + 3 downsample norms
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    with torch.inference_mode():
        out = model(images)
        feats = model.features(model.preprocess(images).tensor)
    for k in feats_ref:
        scale = feats_ref[k].abs().max()
        assert float((feats[k] - feats_ref[k]).abs().max() / scale) < 1e-4, k
    assert sum(len(o["boxes"]) for o in ref) > 0
    for a, b in zip(out, ref):
        assert len(a["boxes"]) == len(b["boxes"])
        # float32 reassociation in the folded convs can flip near-tied scores or an NMS decision on
        # random weights: each detection needs a same-label partner within 1e-3 relative, for >= 95%.
        d = (a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1)
        d[a["labels"][:, None] != b["labels"][None]] = float("inf")
        matched = d.min(1).values < 1e-3 * float(b["boxes"].abs().max())
        assert float(matched.float().mean()) >= 0.95


def test_jit_freeze_features_match_and_cache_per_shape() -> None:
    torch.manual_seed(0)
    model = build_model(load_config(R18, ["model.input.min_size_test=128", "model.input.max_size_test=160",
                                          "model.neck.out_channels=64"])).eval()
    with torch.no_grad():
        _random_stats(model)
    x1, x2 = torch.randn(1, 3, 128, 160), torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        ref1, ref2 = model.features(x1), model.features(x2)
    optimize_for_inference(model, jit_freeze=True)
    assert model.neck is None
    with torch.inference_mode():
        out1, out2, again = model.features(x1), model.features(x2), model.features(x1)
    assert len(model.backbone._cache) == 2  # one frozen graph per input shape, reused
    for ref, out in ((ref1, out1), (ref2, out2), (ref1, again)):
        assert set(out) == set(ref) == {"p2", "p3", "p4", "p5", "p6"}
        for k in ref:
            assert float((out[k] - ref[k]).abs().max() / ref[k].abs().max()) < 1e-4, k


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_equals_conv2d(stride: int, bias: bool, channels_last: bool) -> None:
    """A 1x1 conv computed as a GEMM over NHWC pixels equals nn.Conv2d, strided or not, NCHW or NHWC input."""
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1, stride=stride, bias=bias)
    model = nn.Sequential(conv, nn.Conv2d(40, 8, 3, padding=1))
    x = torch.randn(2, 24, 17, 23)
    expected = model(x)
    assert to_pointwise(model) == 1 and isinstance(model[0], PointwiseConv2d)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model[0](x)
    assert out.shape == (2, 40, -(-17 // stride), -(-23 // stride))
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_norm_gradients_equal_conv_then_frozen_bn() -> None:
    """Frozen BN applied to the conv's weights gives the same output and weight gradient as after the conv."""
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(8, 16, 3, padding=1), FrozenBatchNorm2d(16)
    norm.weight.uniform_(0.5, 2.0)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 9, 9)
    ref = norm(conv(x))
    ref.square().sum().backward()
    grads = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()
    out = conv_norm(conv, norm, x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, grads[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, grads[1], rtol=1e-4, atol=1e-4)


NNPACK = pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch build has no NNPACK")


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
    assert to_winograd(model) == 2 and type(model[1]) is nn.Conv2d  # strided: left alone
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
    conv = nn.Conv2d(64, 16, 3, padding=1)
    small, few = torch.randn(1, 64, 16, 20), torch.randn(1, 64, 40, 40).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        refs = [conv(small), conv(few)]
    to_winograd(conv)
    with torch.no_grad():
        assert torch.equal(conv(small), refs[0])  # 320 pixels < min_pixels
        assert torch.equal(conv(few), refs[1])  # channels-last with 64 < min_channels: conversions would cost more
    x = torch.randn(1, 64, 40, 40, requires_grad=True)
    conv(x).sum().backward()  # autograd: the ordinary convolution (NNPACK's op has no backward here)
    assert x.grad is not None and conv.weight.grad is not None


def test_onednn_linear_equals_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5, bias=False))
    x = torch.randn(7, 3, 48)
    ref = model(x)
    assert to_onednn_linear(model) in (0, 2)
    model.requires_grad_(False)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x.transpose(0, 1)), ref.transpose(0, 1), rtol=1e-5, atol=1e-5)
    assert all(type(m) in (OneDNNLinear, nn.ReLU) for m in model) or not torch.backends.mkldnn.is_available()
