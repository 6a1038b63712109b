"""The ``Backbone`` base class: the contract's methods, ``size_divisibility`` by default the largest
stride, every built-in backbone a subclass, and renamed weight arguments naming ``weights``."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from detres.modeling import build_backbone_and_neck
from detres.modeling.backbones import Backbone, ResNet, TimmBackbone, TorchvisionBackbone
from detres.structures import ShapeSpec


class TwoLevels(Backbone):
    """res2 (stride 4) and res4 (stride 16) of a 3-channel input, 8 and 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 4, stride=4)
        self.b = nn.Conv2d(8, 16, 4, stride=4)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        r2 = self.a(x)
        return {"res2": r2, "res4": self.b(r2)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"res2": ShapeSpec(8, 4), "res4": ShapeSpec(16, 16)}


def test_size_divisibility_defaults_to_largest_stride() -> None:
    bb = TwoLevels()
    assert bb.size_divisibility == 16
    out = bb(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {"res2": (8, 16, 24), "res4": (16, 4, 6)}
    # ResNet pads to 32 even when res5 is not returned or dilated.
    assert ResNet(depth=18, out_features=["res3", "res4"]).size_divisibility == 32
    assert ResNet(depth=18, dilation=2).size_divisibility == 32


def test_backbone_is_abstract_and_builtins_subclass_it() -> None:
    class NoShape(Backbone):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"res2": x}

    with pytest.raises(TypeError, match="abstract"):
        NoShape()
    assert all(issubclass(c, Backbone) for c in (ResNet, TimmBackbone, TorchvisionBackbone))
    assert TorchvisionBackbone("resnet18").size_divisibility == 32


@pytest.mark.parametrize("cls, old, kwargs", [
    (TorchvisionBackbone, "weights_path", {"name": "resnet18"}),
    (TimmBackbone, "pretrained_path", {"name": "resnet18"}),
])
def test_old_weight_argument_names_the_new_one(cls: type, old: str, kwargs: dict, tmp_path) -> None:
    assert cls.moved_keys == {old: "weights"}
    with pytest.raises(TypeError, match=f"{cls.__name__}: '{old}' moved to 'weights'"):
        cls(**kwargs, **{old: str(tmp_path / "w.pth")})
    assert "weights" in cls.__init__.__code__.co_varnames


def test_build_backbone_and_neck_feeds_the_neck_the_backbone_shapes() -> None:
    bb, neck = build_backbone_and_neck(
        {"_target_": "ResNet", "depth": 18, "out_features": ["res3", "res4", "res5"]},
        {"_target_": "FPN", "in_features": ["res3", "res4", "res5"], "out_channels": 32},
    )
    assert isinstance(bb, Backbone) and neck is not None
    assert {k: s.channels for k, s in neck.output_shape().items()} == dict.fromkeys(neck.output_shape(), 32)
    with torch.no_grad():
        feats = neck(bb(torch.randn(1, 3, 64, 64)))
    assert {k: v.shape[1] for k, v in feats.items()} == {k: 32 for k in neck.output_shape()}
