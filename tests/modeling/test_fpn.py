"""FPN and ChannelMapper: shapes equal output_shape(), top blocks, fusion, built from input_shape."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detres.modeling import build_backbone_and_neck
from detres.modeling.backbones import ResNet
from detres.modeling.necks import FPN, ChannelMapper
from detres.structures import ShapeSpec


def test_r50_fpn_800x1216() -> None:
    torch.manual_seed(0)
    backbone, fpn = build_backbone_and_neck(
        {"_target_": "ResNet", "depth": 50}, {"_target_": "FPN", "in_features": ["res2", "res3", "res4", "res5"]}
    )
    backbone.eval(), fpn.eval()
    with torch.no_grad():
        out = fpn(backbone(torch.randn(2, 3, 800, 1216)))
    expected = {"p2": (200, 304), "p3": (100, 152), "p4": (50, 76), "p5": (25, 38), "p6": (13, 19)}
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 256, *hw) for k, hw in expected.items()}
    shapes = fpn.output_shape()
    assert list(shapes) == list(out)
    for k, v in out.items():
        assert v.shape[1] == shapes[k].channels and shapes[k].stride == 2 ** int(k[1:])
        assert v.shape[-2] == -(-800 // shapes[k].stride) and v.shape[-1] == -(-1216 // shapes[k].stride)
        assert torch.isfinite(v).all()
    assert fpn.lateral_convs[0][0].in_channels == 256 and fpn.lateral_convs[3][0].in_channels == 2048


def _shapes() -> dict[str, ShapeSpec]:
    return {"res3": ShapeSpec(16, 8), "res4": ShapeSpec(24, 16), "res5": ShapeSpec(32, 32)}


def _feats(b: int = 1, h: int = 64, w: int = 96) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(b, s.channels, h // s.stride, w // s.stride, generator=g) for k, s in _shapes().items()}


@pytest.mark.parametrize("top_block_in, cin", [("p5", 8), ("res5", 32)])
def test_p6p7_top_block(top_block_in: str, cin: int) -> None:
    fpn = FPN(_shapes(), in_features=["res3", "res4", "res5"], out_channels=8, top_block="p6p7",
              top_block_in=top_block_in)
    out = fpn(_feats())
    assert {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()} == {
        "p3": (8, 8), "p4": (8, 16), "p5": (8, 32), "p6": (8, 64), "p7": (8, 128)}
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2), "p7": (1, 1)}
    assert fpn.p6.in_channels == cin
    src = out["p5"] if top_block_in == "p5" else _feats()["res5"]
    torch.testing.assert_close(out["p6"], fpn.p6(src))
    torch.testing.assert_close(out["p7"], fpn.p7(F.relu(out["p6"])))


def test_maxpool_top_block_subsamples_p5() -> None:
    fpn = FPN(_shapes(), in_features=["res3", "res4", "res5"], out_channels=8)
    out = fpn(_feats())
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])


def test_none_top_block_and_subset() -> None:
    fpn = FPN(_shapes(), in_features=["res4", "res5"], out_channels=4, top_block="none")
    out = fpn(_feats(b=2))
    assert list(out) == list(fpn.output_shape()) == ["p4", "p5"]
    assert out["p4"].shape == (2, 4, 4, 6) and out["p5"].shape == (2, 4, 2, 3)


def test_top_down_sum_matches_manual() -> None:
    torch.manual_seed(0)
    fpn = FPN(_shapes(), in_features=["res4", "res5"], out_channels=4, top_block="none")
    feats = _feats()
    lat5 = fpn.lateral_convs[1](feats["res5"])
    lat4 = fpn.lateral_convs[0](feats["res4"]) + F.interpolate(lat5, scale_factor=2, mode="nearest")
    out = fpn(feats)
    torch.testing.assert_close(out["p5"], fpn.output_convs[1](lat5))
    torch.testing.assert_close(out["p4"], fpn.output_convs[0](lat4))
    avg = FPN(_shapes(), in_features=["res4", "res5"], out_channels=4, top_block="none", fuse="avg")
    avg.load_state_dict(fpn.state_dict())
    torch.testing.assert_close(avg(feats)["p4"], fpn.output_convs[0](lat4 / 2))


def test_norm_and_module_names() -> None:
    fpn = FPN(_shapes(), in_features=["res3", "res4", "res5"], out_channels=32, norm="gn")
    keys = set(fpn.state_dict())
    assert {"lateral_convs.0.0.weight", "lateral_convs.0.1.weight", "output_convs.2.0.weight"} <= keys
    assert "lateral_convs.0.0.bias" not in keys  # no conv bias before a norm
    plain = FPN(_shapes(), in_features=["res3"], out_channels=8)
    assert "lateral_convs.0.0.bias" in plain.state_dict()


def test_fpn_errors_name_the_feature() -> None:
    with pytest.raises(ValueError, match=r"\['res2'\] are not backbone outputs"):
        FPN(_shapes(), in_features=["res2", "res3"])
    with pytest.raises(ValueError, match="top_block must be one of"):
        FPN(_shapes(), in_features=["res3"], top_block="p6")


def test_channel_mapper() -> None:
    cm = ChannelMapper(_shapes(), in_features=["res4", "res5"], out_channels=64, norm="gn")
    out = cm(_feats(b=2))
    assert {k: (s.channels, s.stride) for k, s in cm.output_shape().items()} == {"p4": (64, 16), "p5": (64, 32)}
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p4": (2, 64, 4, 6), "p5": (2, 64, 2, 3)}
    assert "convs.1.0.weight" in cm.state_dict() and "convs.1.1.weight" in cm.state_dict()
    with pytest.raises(ValueError, match=r"\['res2'\]"):
        ChannelMapper(_shapes(), in_features=["res2"])


def test_resnet18_fpn_small_input_from_output_shape() -> None:
    backbone = ResNet(depth=18).eval()
    fpn = FPN(backbone.output_shape(), out_channels=16).eval()
    with torch.no_grad():
        out = fpn(backbone(torch.randn(1, 3, 128, 96)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 16, 32, 24), "p3": (1, 16, 16, 12), "p4": (1, 16, 8, 6), "p5": (1, 16, 4, 3), "p6": (1, 16, 2, 2)}
