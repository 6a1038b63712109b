"""Pluggable backbones: timm and torchvision models, a user's module by dotted path or registered
via custom_imports, all feeding FPN from YAML configs that never write a channel number; local
weights in torchvision / timm / detection layouts with a missing/unexpected report."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from detres.checkpoint import load_backbone_weights
from detres.config import load_config
from detres.registry import import_modules
from detres.modeling import build_backbone_and_neck
from detres.modeling.backbones import ResNet, TimmBackbone, TorchvisionBackbone

FPN_NODE = "{_target_: FPN, in_features: [%s]}"


def _build(tmp_path: Path, backbone: str, in_features: str, extra: str = "", overrides: list[str] | None = None):
    text = textwrap.dedent(f"""
        {extra}
        model:
          backbone: {backbone}
          neck: {FPN_NODE % in_features}
    """)
    assert not re.search(r"channel", text)  # shapes flow from the backbone
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    cfg = load_config(path, overrides or [])
    backbone_m, neck = build_backbone_and_neck(cfg.model.backbone, cfg.model.neck)
    return backbone_m.eval(), neck.eval()


def _check_pyramid(backbone, neck, h: int = 64, w: int = 96) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, h, w))
        out = neck(feats)
    for k, s in backbone.output_shape().items():
        assert feats[k].shape == (2, s.channels, -(-h // s.stride), -(-w // s.stride)), k
    for i, f in enumerate(neck.in_features):
        assert neck.lateral_convs[i][0].in_channels == backbone.output_shape()[f].channels
    shapes = neck.output_shape()
    assert list(out) == list(shapes)
    for k, v in out.items():
        assert v.shape[:2] == (2, shapes[k].channels) and v.shape[-1] == -(-w // shapes[k].stride), k
    return out


@pytest.mark.parametrize("name", ["resnet18d", "convnext_atto", "efficientnet_b0"])
def test_timm_backbone_feeds_fpn(tmp_path: Path, name: str) -> None:
    backbone, neck = _build(tmp_path, f"{{_target_: TimmBackbone, name: {name}}}", "res2, res3, res4, res5")
    info = backbone.model.feature_info
    assert [s.channels for s in backbone.output_shape().values()] == info.channels()
    assert [s.stride for s in backbone.output_shape().values()] == [4, 8, 16, 32] == info.reduction()
    out = _check_pyramid(backbone, neck)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and out["p2"].shape == (2, 256, 16, 24)


def test_timm_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="timm has no model 'convnext_atoo'; did you mean convnext_atto"):
        TimmBackbone("convnext_atoo")


def test_torchvision_mobilenet_feeds_fpn(tmp_path: Path) -> None:
    backbone, neck = _build(tmp_path, "{_target_: TorchvisionBackbone, name: mobilenet_v3_small}", "res3, res4, res5")
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        "res2": (16, 4), "res3": (24, 8), "res4": (48, 16), "res5": (576, 32)}
    _check_pyramid(backbone, neck, 96, 64)


def test_torchvision_resnet_equals_detres_resnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    tvb = TorchvisionBackbone("resnet18", weights=str(tmp_path / "r18.pth")).eval()
    det = ResNet(depth=18, norm="bn", weights=str(tmp_path / "r18.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tvb(x), det(x)
    assert tvb.output_shape() == det.output_shape()
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_user_module_by_dotted_path(tmp_path: Path) -> None:
    backbone, neck = _build(tmp_path, "{_target_: tests.modeling.user_backbones.TinyBackbone, width: 4}",
                            "res2, res3, res4", overrides=["model.backbone.width=6"],
                            extra="custom_imports: [tests.modeling.user_backbones]")
    assert type(backbone).__name__ == "TinyBackbone" and backbone.output_shape()["res4"].channels == 24
    out = _check_pyramid(backbone, neck)
    assert list(out) == ["p2", "p3", "p4", "p5"]


def test_registered_user_class_via_custom_imports(tmp_path: Path) -> None:
    backbone, neck = _build(tmp_path, "{_target_: UserRegisteredBackbone, num_levels: 4}", "res2, res3, res4, res5",
                            extra="custom_imports: [tests.modeling.user_backbones]")
    assert type(backbone).__name__ == "UserRegisteredBackbone"
    _check_pyramid(backbone, neck)


def test_not_a_backbone_is_rejected() -> None:
    import_modules(["tests.modeling.user_backbones"])  # trusted, so the path resolves
    with pytest.raises(TypeError, match=r"model.backbone: NotABackbone is not a backbone: it lacks output_shape\(\)"):
        build_backbone_and_neck({"_target_": "tests.modeling.user_backbones.NotABackbone"}, None)


# ---------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def tv_resnet18() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_resnet_weights_from_config_torchvision_layout(tmp_path: Path, tv_resnet18) -> None:
    torch.save(tv_resnet18, tmp_path / "tv.pth")
    backbone, _ = _build(tmp_path, "{_target_: ResNet, depth: 18}", "res5",
                         overrides=[f"model.backbone.weights={tmp_path / 'tv.pth'}"])
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, tv_resnet18["layer3.1.conv2.weight"])
    torch.testing.assert_close(backbone.layer3[1].bn2.running_var, tv_resnet18["layer3.1.bn2.running_var"])
    report = load_backbone_weights(ResNet(depth=18), tmp_path / "tv.pth")
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]


def test_weights_from_detection_checkpoint_prefixes(tmp_path: Path, tv_resnet18) -> None:
    sd = {f"backbone.body.{k}": v for k, v in tv_resnet18.items() if not k.startswith("fc.")}
    sd["rpn.head.conv.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "det.pth")
    model = ResNet(depth=18)
    report = load_backbone_weights(model, tmp_path / "det.pth")
    assert report.missing == [] and report.unexpected == ["rpn.head.conv.weight"]
    torch.testing.assert_close(model.layer4[0].downsample[0].weight, tv_resnet18["layer4.0.downsample.0.weight"])
    # a detres detector checkpoint of a TimmBackbone: `backbone.model.` nested prefixes
    timm_sd = timm.create_model("resnet18d").state_dict()
    torch.save({"model": {f"module.backbone.model.{k}": v for k, v in timm_sd.items()}}, tmp_path / "ddp.pth")
    tb = TimmBackbone("resnet18d", weights=str(tmp_path / "ddp.pth"))
    torch.testing.assert_close(tb.model.layer2[0].conv1.weight, timm_sd["layer2.0.conv1.weight"])


@pytest.mark.parametrize("name, head", [("resnet18d", ["fc.bias", "fc.weight"]),
                                        ("convnext_atto", ["head.fc.bias", "head.fc.weight", "head.norm.bias",
                                                           "head.norm.weight"])])
def test_timm_weights_timm_layout(tmp_path: Path, name: str, head: list[str]) -> None:
    torch.manual_seed(1)
    src = timm.create_model(name).state_dict()
    torch.save(src, tmp_path / "w.pth")
    tb = TimmBackbone(name, weights=str(tmp_path / "w.pth"))
    own = tb.model.state_dict()
    loaded = {k: v for k, v in src.items() if k in own or k.replace(".", "_", 1) in own}
    assert len(loaded) == len(own)  # every backbone tensor came from the file
    for k, v in loaded.items():
        torch.testing.assert_close(own.get(k, own.get(k.replace(".", "_", 1))), v)
    report = load_backbone_weights(TimmBackbone(name).model, tmp_path / "w.pth")
    assert report.missing == [] and sorted(report.unexpected) == head


def test_checkpoint_that_does_not_fit_names_key_and_fix(tmp_path: Path, tv_resnet18) -> None:
    torch.save(tv_resnet18, tmp_path / "tv.pth")
    with pytest.raises(ValueError) as e:
        ResNet(depth=18, num_classes=10, weights=str(tmp_path / "tv.pth"))
    msg = str(e.value)
    assert "fc.weight: file (1000, 512) vs model (10, 512)" in msg and "num_classes" in msg and "tv.pth" in msg
    bad = dict(tv_resnet18, **{"layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"layer2.0.conv1.weight: file \(128, 64, 1, 1\) vs model \(128, 64, 3, 3\)"):
        ResNet(depth=18, weights=str(tmp_path / "bad.pth"))
    torch.save({"encoder.x": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no key of the file .* matches the model; first file keys: encoder.x"):
        ResNet(depth=18, weights=str(tmp_path / "other.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ResNet(depth=18, weights=str(tmp_path / "missing.pth"))
