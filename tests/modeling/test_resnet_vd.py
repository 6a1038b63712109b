"""ResNet-vd (``variant="d"``): timm ``resnet*d`` parity (weights load as they are, equal outputs, as
a classifier too), the official RT-DETR PResNet layout (``first_block_projection``, converter, a
hand-written PResNet forward over the original keys), norms, shapes, odd input sizes."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.checkpoint.presnet import convert_presnet, is_presnet, presnet_key, presnet_resnet_args
from detres.modeling.backbones import ResNet

timm = pytest.importorskip("timm")

ALL = ["res2", "res3", "res4", "res5"]


def _randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine (timm zero-inits the last BN of each block), so a wrongly
    mapped norm changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.3)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    return model.eval()


def _timm_stages(ref: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    y = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
    out = {}
    for i in range(1, 5):
        y = getattr(ref, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_state_dict_layout_equals_timm(depth: int) -> None:
    with torch.device("meta"):  # shapes only
        model = ResNet(depth=depth, variant="d", num_classes=1000, norm="bn")
        ref = timm.create_model(f"resnet{depth}d", pretrained=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("depth", [18, 50])
def test_equals_timm_with_its_weights(depth: int) -> None:
    torch.manual_seed(0)
    ref = _randomize_norms(timm.create_model(f"resnet{depth}d", pretrained=False), seed=depth)
    sd = ref.state_dict()
    clf = ResNet(depth=depth, variant="d", num_classes=1000).eval()  # norm bn (classifier default)
    clf.load_state_dict(sd, strict=True)
    det = ResNet(depth=depth, variant="d", out_features=ALL).eval()  # norm frozen_bn (detection default)
    report = det.load_state_dict(sd, strict=False)
    assert sorted(report.unexpected_keys) == ["fc.bias", "fc.weight"] and not report.missing_keys
    x = torch.randn(1, 3, 75, 61, generator=torch.Generator().manual_seed(1)) * 2  # odd: pools cut by the border
    with torch.no_grad():
        ref_logits, ref_feats = ref(x), _timm_stages(ref, x)
        logits, feats = clf(x), det(x)
    assert ref_logits.std() > 0.05  # not a comparison of two near-constant tensors
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-5)
    for name, r in ref_feats.items():
        torch.testing.assert_close(feats[name], r, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    # A wrong mapping is caught: swap the stem's middle BN statistics.
    bad = dict(sd)
    bad["conv1.4.running_var"] = bad["conv1.4.running_var"].flip(0)
    det.load_state_dict(bad, strict=False)
    with torch.no_grad():
        assert not torch.allclose(det(x)["res2"], ref_feats["res2"], atol=1e-3)


def test_layout_of_the_vd_parts() -> None:
    m = ResNet(depth=50, variant="d")
    assert [type(c) for c in m.conv1] == [nn.Conv2d, FrozenBatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]
    assert [(c.in_channels, c.out_channels, c.stride) for c in m.conv1 if isinstance(c, nn.Conv2d)] == [
        (3, 32, (2, 2)), (32, 32, (1, 1)), (32, 64, (1, 1))]
    pool, conv, _ = m.layer2[0].downsample
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert conv.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)  # stride on the 3x3, as torchvision
    assert isinstance(m.layer1[0].downsample[0], nn.Identity)  # stride-1 projection (64 -> 256): no pooling
    r18 = ResNet(depth=18, variant="d")
    assert r18.layer1[0].downsample is None and r18.layer2[1].downsample is None
    proj = ResNet(depth=18, variant="d", first_block_projection=True)
    assert isinstance(proj.layer1[0].downsample[0], nn.Identity) and proj.layer1[0].downsample[1].weight.shape == (64, 64, 1, 1)
    assert proj.layer1[1].downsample is None and isinstance(proj.layer2[0].downsample[0], nn.AvgPool2d)
    # b keeps torchvision's layout; first_block_projection works there too (strided 1x1, indices 0/1).
    b = ResNet(depth=18, first_block_projection=True)
    assert isinstance(b.conv1, nn.Conv2d) and b.layer1[0].downsample[0].stride == (1, 1)
    with pytest.raises(ValueError, match="variant must be 'b'.*got 'c'"):
        ResNet(depth=18, variant="c")


def test_avg_pool_matches_presnet_pool_on_odd_sizes() -> None:
    """timm's pool (count_include_pad False) and PResNet's (True, padding 0) agree: with no padding a
    window cut by the border is divided by its in-image size either way."""
    x = torch.randn(2, 5, 13, 9)
    ours = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(x)
    presnet = nn.AvgPool2d(2, 2, 0, ceil_mode=True)(x)
    assert ours.shape == (2, 5, 7, 5)
    assert torch.equal(ours, presnet)
    torch.testing.assert_close(ours[..., -1, -1], x[..., -1, -1])  # the corner window holds one pixel


@pytest.mark.parametrize("depth, size", [(18, (64, 96)), (18, (65, 47)), (18, (33, 33)), (50, (37, 71))])
def test_output_shape_and_odd_sizes(depth: int, size: tuple[int, int]) -> None:
    model = ResNet(depth=depth, variant="d", first_block_projection=depth == 18).eval()
    expansion = 1 if depth == 18 else 4
    assert {k: (s.channels, s.stride) for k, s in model.output_shape().items()} == {
        f"res{k}": (64 * 2 ** (k - 2) * expansion, 2**k) for k in range(2, 6)}
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    for k, t in out.items():
        stride = model.output_shape()[k].stride
        assert t.shape == (1, model.output_shape()[k].channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(t).all()


def test_freeze_at_stem_freezes_every_stem_norm() -> None:
    model = ResNet(depth=18, variant="d", norm="bn", freeze_at=1)
    assert all(isinstance(model.conv1[i], FrozenBatchNorm2d) for i in (1, 4)) and isinstance(model.bn1, FrozenBatchNorm2d)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.0.weight", "conv1.3.weight", "conv1.6.weight"}
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d) and model.layer1[0].conv1.weight.requires_grad


def test_classifier_trains_bn_and_learns() -> None:
    torch.manual_seed(0)
    model = ResNet(depth=18, variant="d", num_classes=3).train()
    assert isinstance(model.conv1[1], nn.BatchNorm2d) and isinstance(model.layer2[0].downsample[2], nn.BatchNorm2d)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.conv1[0].weight.grad is not None and model.conv1[0].weight.grad.abs().sum() > 0
    assert losses[-1] < 0.1 * losses[0]  # overfits one batch
    assert int(model.conv1[1].num_batches_tracked) == 4


def test_presnet_key_mapping_and_errors() -> None:
    assert presnet_key("conv1.conv1_2.norm.running_var") == "conv1.4.running_var"
    assert presnet_key("conv1.conv1_3.norm.weight") == "bn1.weight"
    assert presnet_key("res_layers.0.blocks.0.short.conv.weight") == "layer1.0.downsample.1.weight"
    assert presnet_key("res_layers.0.blocks.0.short.norm.num_batches_tracked") == "layer1.0.downsample.2.num_batches_tracked"
    assert presnet_key("res_layers.2.blocks.0.short.conv.conv.weight") == "layer3.0.downsample.1.weight"
    assert presnet_key("res_layers.2.blocks.0.short.conv.norm.bias") == "layer3.0.downsample.2.bias"
    assert presnet_key("res_layers.3.blocks.2.branch2c.norm.running_mean") == "layer4.2.bn3.running_mean"
    with pytest.raises(ValueError, match="'backbone.conv1.conv1_1.conv.weight'.*without the 'backbone.' prefix"):
        presnet_key("backbone.conv1.conv1_1.conv.weight")
    with pytest.raises(ValueError, match="only variant d"):
        presnet_resnet_args({"conv1.conv1_1.conv.weight": torch.zeros(64, 3, 7, 7)})


# ---------------------------------------------------------------- official PResNet (RT-DETRv2 fixture)

def _cbn(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, stride: int = 1, relu: bool = True) -> torch.Tensor:
    """PResNet's ConvNormLayer over the original keys ``p + {conv, norm}.*``."""
    w = sd[p + "conv.weight"]
    x = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2)
    x = F.batch_norm(x, sd[p + "norm.running_mean"], sd[p + "norm.running_var"], sd[p + "norm.weight"],
                     sd[p + "norm.bias"], training=False, eps=1e-5)
    return F.relu(x) if relu else x


def presnet_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The official PResNet variant d forward (fixture README, 'Backbone'), written from scratch over
    the ORIGINAL keys: stem of three conv+BN+ReLU, max pool, stages whose first block projects."""
    for i, stride in enumerate((2, 1, 1)):
        x = _cbn(sd, f"conv1.conv1_{i + 1}.", x, stride)
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for i in range(4):
        j = 0
        while f"res_layers.{i}.blocks.{j}.branch2a.conv.weight" in sd:
            p = f"res_layers.{i}.blocks.{j}."
            stride = 2 if i > 0 and j == 0 else 1
            if p + "branch2c.conv.weight" in sd:  # BottleNeck: stride on the 3x3 (variant d)
                out = _cbn(sd, p + "branch2c.", _cbn(sd, p + "branch2b.", _cbn(sd, p + "branch2a.", x), stride), relu=False)
            else:
                out = _cbn(sd, p + "branch2b.", _cbn(sd, p + "branch2a.", x, stride), relu=False)
            if p + "short.conv.conv.weight" in sd:
                short = _cbn(sd, p + "short.conv.", F.avg_pool2d(x, 2, 2, 0, ceil_mode=True), relu=False)
            elif p + "short.conv.weight" in sd:
                short = _cbn(sd, p + "short.", x, stride, relu=False)
            else:
                short = x
            x = F.relu(out + short)
            j += 1
        outs.append(x)
    return outs


@pytest.fixture(scope="module", params=["manifest.json", "manifest_r50.json"], ids=["r18", "r50"])
def presnet_sd(request: pytest.FixtureRequest, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The backbone part (no ``backbone.`` prefix) of the official checkpoint that gen_checkpoint.py
    writes from the RT-DETRv2 manifest. The backbone tensors come first in the manifest, so a manifest
    cut after them draws exactly the same values (and skips the other half of r50's ~170 MB)."""
    fixtures = shared_dir / "fixtures"
    manifest = json.loads((fixtures / "rtdetrv2" / request.param).read_text())
    keys = [t[0] for t in manifest["tensors"]]
    n = sum(k.startswith("backbone.") for k in keys)
    assert all(k.startswith("backbone.") for k in keys[:n]), "backbone tensors are not a prefix of the manifest"
    tmp = tmp_path_factory.mktemp(request.param.removesuffix(".json"))
    (tmp / "m.json").write_text(json.dumps({**manifest, "tensors": manifest["tensors"][:n]}))
    subprocess.run([sys.executable, str(fixtures / "gen_checkpoint.py"), str(tmp / "m.json"), str(tmp / "ckpt.pth")], check=True)
    full = torch.load(tmp / "ckpt.pth", weights_only=True)["ema"]["module"]
    return {"name": request.param, "sd": {k.removeprefix("backbone."): v for k, v in full.items()}, "dir": tmp}


def test_presnet_converts_loads_strictly_and_equals_reference(presnet_sd: dict) -> None:
    sd, r18 = presnet_sd["sd"], presnet_sd["name"] == "manifest.json"
    assert is_presnet(sd)
    args = presnet_resnet_args(sd)
    assert args == {"depth": 18 if r18 else 50, "variant": "d", "first_block_projection": True,
                    "norm": "bn" if r18 else "frozen_bn"}
    converted = convert_presnet(sd)
    assert len(converted) == len(sd) and all(v is sd[k] for k, v in zip(sd, converted.values()))
    model = ResNet(**args, out_features=["res3", "res4", "res5"]).eval()
    model.load_state_dict(converted, strict=True)  # every key maps, every shape fits, nothing missing
    norm_type = nn.BatchNorm2d if r18 else FrozenBatchNorm2d  # R18: plain BN in eval; R50: FrozenBatchNorm2d
    assert isinstance(model.conv1[1], norm_type) and isinstance(model.layer1[0].downsample[2], norm_type)
    x = torch.rand(1, 3, 97, 75, generator=torch.Generator().manual_seed(3))  # odd: ceil-mode pools at the border
    with torch.no_grad():
        feats = model(x)
        ref = presnet_reference(sd, x)
    assert [tuple(f.shape) for f in ref[1:]] == [tuple(feats[k].shape) for k in ("res3", "res4", "res5")]
    for name, r in zip(("res3", "res4", "res5"), ref[1:]):
        assert r.abs().max() > 1e-2
        err = ((feats[name] - r).abs().max() / r.abs().max()).item()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_presnet_file_loads_through_weights(presnet_sd: dict) -> None:
    """``ResNet(weights=...)`` reads a PResNet file (e.g. the official ImageNet ResNet-vd weights) or
    the ``backbone.*`` part of a detector's state dict, renaming the keys."""
    sd = presnet_sd["sd"]
    args = presnet_resnet_args(sd)
    expected = convert_presnet(sd)
    for name, obj in [("plain.pth", sd), ("detector.pth", {"model": {"backbone." + k: v for k, v in sd.items()}})]:
        path = presnet_sd["dir"] / name
        torch.save(obj, path)
        model = ResNet(**args, weights=str(path))
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in expected.items() if k in own)
        assert torch.equal(own["conv1.6.weight"], sd["conv1.conv1_3.conv.weight"])
