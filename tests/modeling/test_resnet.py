"""ResNet: torchvision parameter counts, exact equality with torchvision given its weights,
freeze_at, frozen BatchNorm, stride_in_1x1 and dilation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.modeling.backbones import ResNet
from detres.modeling.backbones.norm import make_norm

EXPECTED_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(EXPECTED_PARAMS))
def test_param_count_equals_torchvision(depth: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = ResNet(depth=depth, num_classes=1000, norm="bn")
        ref = getattr(torchvision.models, f"resnet{depth}")()
    n = sum(p.numel() for p in model.parameters())
    assert n == EXPECTED_PARAMS[depth] == sum(p.numel() for p in ref.parameters())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def _random_torchvision(depth: int, seed: int = 0) -> nn.Module:
    """A seeded torchvision ResNet whose BN statistics and affine are random too, so that a wrong
    mapping of any BN tensor changes the outputs."""
    torch.manual_seed(seed)
    ref = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.3, 0.8)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        ref.fc.bias.normal_()
    return ref.eval()


def _torchvision_stages(ref: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out = {}
    y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    for i in range(1, 5):
        y = getattr(ref, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out, ref.fc(torch.flatten(ref.avgpool(y), 1))


@pytest.mark.parametrize("depth, norm", [(50, "frozen_bn"), (50, "bn"), (18, "frozen_bn"), (34, "bn")])
def test_equals_torchvision_with_its_weights(tmp_path: Path, depth: int, norm: str) -> None:
    ref = _random_torchvision(depth)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    model = ResNet(depth=depth, num_classes=1000, norm=norm, weights=str(path)).eval()
    det = ResNet(depth=depth, norm=norm, out_features=["res2", "res3", "res4", "res5"]).eval()
    report = det.load_state_dict(ref.state_dict(), strict=False)
    assert sorted(report.unexpected_keys) == ["fc.bias", "fc.weight"] and not report.missing_keys
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        ref_feats, ref_logits = _torchvision_stages(ref, x)
        logits = model(x)
        feats = det(x)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert ref_logits.std() > 0.1  # the comparison is not between two near-zero tensors
    for name, ref_f in ref_feats.items():
        torch.testing.assert_close(feats[name], ref_f, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    # ... and a deliberately wrong mapping is caught: swap one BN's statistics.
    sd = ref.state_dict()
    sd["layer1.0.bn1.running_var"] = sd["layer1.0.bn1.running_var"].flip(0)
    det.load_state_dict(sd, strict=False)
    with torch.no_grad():
        assert not torch.allclose(det(x)["res2"], ref_feats["res2"], atol=1e-3)


def _prefixes(freeze_at: int) -> tuple[str, ...]:
    return (("conv1.", "bn1.") if freeze_at >= 1 else ()) + tuple(f"layer{k - 1}." for k in range(2, freeze_at + 1))


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at(freeze_at: int, norm: str) -> None:
    all_params = {n for n, _ in ResNet(depth=18, norm=norm).named_parameters()}
    model = ResNet(depth=18, norm=norm, freeze_at=freeze_at)
    frozen_prefix = _prefixes(freeze_at)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in all_params if not n.startswith(frozen_prefix)}
    # Frozen parts keep only their conv weights as parameters: their BNs became FrozenBatchNorm2d.
    assert frozen == {n for n in all_params if n.startswith(frozen_prefix) and ".bn" not in n
                      and not n.startswith("bn1.") and ".downsample.1." not in n}
    for name, m in model.named_modules():
        if name and (name + ".").startswith(frozen_prefix) and name.split(".")[-1] in ("bn1", "bn2", "1"):
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                assert isinstance(m, FrozenBatchNorm2d), name
    n_frozen_expected = {0: 0, 1: 1, 2: 1 + 4, 3: 1 + 4 + 5, 4: 1 + 4 + 5 + 5, 5: 1 + 4 + 5 + 5 + 5}[freeze_at]
    assert len(frozen) == n_frozen_expected  # conv counts: stem 1, layer1 4, layers 2-4 with projection 5


def test_frozen_bn_never_updates_in_train_mode() -> None:
    torch.manual_seed(0)
    model = ResNet(depth=18, norm="frozen_bn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_freeze_at_with_bn_keeps_frozen_stage_statistics() -> None:
    torch.manual_seed(0)
    model = ResNet(depth=18, norm="bn", freeze_at=2).train()
    frozen_before = model.layer1[0].bn1.running_mean.clone()
    live_before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer1[0].bn1.running_mean, frozen_before)
    assert not torch.equal(model.layer2[0].bn1.running_mean, live_before)


def test_output_shapes_match_output_shape() -> None:
    model = ResNet(depth=18).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = model(x)
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)}
    for k, t in out.items():
        assert t.shape == (1, shapes[k].channels, 96 // shapes[k].stride, 128 // shapes[k].stride)
    assert model.size_divisibility == 32


def test_stride_in_1x1_moves_the_stride() -> None:
    tv = ResNet(depth=50, out_features=["res3", "res5"])
    caffe = ResNet(depth=50, out_features=["res3", "res5"], stride_in_1x1=True)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert caffe.layer2[0].downsample[0].stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tv.eval()(x), caffe.eval()(x)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()} == {
        "res3": (1, 512, 8, 8), "res5": (1, 2048, 2, 2)}


@pytest.mark.parametrize("depth", [18, 50])
def test_dilation_keeps_res5_at_stride_16(depth: int) -> None:
    model = ResNet(depth=depth, dilation=2).eval()
    assert model.output_shape()["res5"].stride == 16 and model.output_shape()["res4"].stride == 16
    last_conv = model.layer4[1].conv2 if depth >= 50 else model.layer4[1].conv1  # torchvision style: block 0 keeps dilation 1
    assert last_conv.dilation == (2, 2) and last_conv.stride == (1, 1)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:] == (4, 6)


@pytest.mark.parametrize("norm, cls", [("gn", nn.GroupNorm), ("bn", nn.BatchNorm2d), ("syncbn", nn.SyncBatchNorm)])
def test_norms(norm: str, cls: type) -> None:
    model = ResNet(depth=18, norm=norm, out_features=["res5"])
    assert isinstance(model.layer3[1].bn2, cls) and isinstance(model.bn1, cls)
    if norm != "syncbn":  # SyncBatchNorm needs a process group in training
        with torch.no_grad():
            assert model.train()(torch.randn(2, 3, 64, 64))["res5"].shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match="unknown norm 'bnn'"):
        make_norm("bnn", 8)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet(depth=20)
    with pytest.raises(ValueError, match=r"\['res6'\]"):
        ResNet(depth=18, out_features=["res5", "res6"])
    with pytest.raises(ValueError, match="freeze_at must be in 0..5"):
        ResNet(depth=18, freeze_at=6)


def test_frozen_bn_folding_keeps_forward_hooks_working() -> None:
    """A frozen BN is folded into its conv's weights, but a hooked conv still runs (and is seen) as a module."""
    torch.manual_seed(0)
    model = ResNet(depth=18, norm="frozen_bn", out_features=["res2"]).eval()
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.normal_()
    x = torch.randn(1, 3, 64, 64)
    folded = model(x)["res2"]
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hooked = model(x)["res2"]
    handle.remove()
    assert seen == [torch.Size([1, 64, 32, 32])]
    torch.testing.assert_close(hooked, folded, rtol=1e-4, atol=1e-4)


def test_classifier_trains_its_bn_by_default_detection_backbone_stays_frozen() -> None:
    torch.manual_seed(0)
    clf = ResNet(depth=18, num_classes=10).train()
    norms = [m for m in clf.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert len(norms) == 20 and all(type(m) is nn.BatchNorm2d for m in norms)  # stem 1 + 8 blocks x 2 + 3 shortcuts
    assert all(p.requires_grad for m in norms for p in m.parameters())
    before = clf.layer3[0].bn1.running_mean.clone()
    logits = clf(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10)
    assert not torch.equal(clf.layer3[0].bn1.running_mean, before)  # statistics update in train mode
    assert int(clf.bn1.num_batches_tracked) == 1

    det = ResNet(depth=18)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in det.modules()) == 20
    # An explicit norm wins in either mode.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ResNet(depth=18, num_classes=10, norm="frozen_bn").modules())


@pytest.mark.parametrize("depth,variant", [(18, "d"), (50, "d")])
def test_classifier_variants_train_alike(depth: int, variant: str) -> None:
    """ResNet-vd as a classifier is the plain ResNet's classifier (torchvision/timm ``fc`` on the pooled
    res5 features, trainable BN) and overfits a tiny batch."""
    torch.manual_seed(0)
    clf = ResNet(depth=depth, variant=variant, num_classes=10).train()
    width = 512 if depth == 18 else 2048
    assert clf.fc.weight.shape == (10, width) and clf.fc.bias.shape == (10,)
    norms = [m for m in clf.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    assert all(p.requires_grad for p in clf.parameters())
    x, y = torch.randn(4, 3, 32, 48), torch.tensor([0, 3, 7, 3])
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        logits = clf(x)
        assert logits.shape == (4, 10)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    stem = clf.conv1[0] if variant == "d" else clf.conv1
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    clf.eval()
    with torch.no_grad():
        assert torch.equal(clf(x[:1]), clf(x[:1]))  # running statistics in eval: deterministic
