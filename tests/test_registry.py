"""Registry and instantiate: registration, lookups with close matches, dotted paths, injection."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from detres.registry import BACKBONES, NECKS, Registry, close_matches, import_modules, instantiate, locate
from detres.structures import ShapeSpec


def test_register_uses_class_name_and_rejects_duplicates() -> None:
    reg = Registry("TEST")

    @reg.register()
    class Foo:
        pass

    assert reg.get("Foo") is Foo and "Foo" in reg and reg.list() == ["Foo"]
    reg.register(Foo)  # the same object again is harmless
    Other = type("Foo", (), {})
    with pytest.raises(KeyError, match="already has 'Foo'"):
        reg.register(Other)


def test_get_lists_close_matches() -> None:
    reg = Registry("TEST")
    reg.register(type("ResNet", (), {}))
    reg.register(type("RegNet", (), {}))
    with pytest.raises(KeyError) as e:
        reg.get("ResNett")
    msg = e.value.args[0]
    assert "'ResNett'" in msg and "did you mean ResNet" in msg and "custom_imports" in msg


def test_builtin_registrations() -> None:
    locate("ResNet")  # fills the registries
    assert {"ResNet", "TimmBackbone", "TorchvisionBackbone"} <= set(BACKBONES.list())
    assert {"FPN", "ChannelMapper"} <= set(NECKS.list())
    assert close_matches("fpn", NECKS.list())[0] == "FPN"


def test_locate_dotted_path_and_unknown() -> None:
    assert locate("torch.optim.AdamW") is torch.optim.AdamW
    assert locate("torch.nn.ReLU") is torch.nn.ReLU
    with pytest.raises(KeyError) as e:
        locate("ResNot")
    assert "'ResNot'" in e.value.args[0] and "ResNet" in e.value.args[0]
    with pytest.raises(KeyError, match="no_such_pkg.Thing"):
        locate("no_such_pkg.Thing")


def test_instantiate_nested_lists_and_injection() -> None:
    cfg = OmegaConf.create(
        {"a": {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2},
         "b": [{"_target_": "torch.nn.ReLU"}, 5]}
    )
    out = instantiate(cfg)
    assert isinstance(out["a"], torch.nn.Linear) and out["a"].weight.shape == (2, 3)
    assert isinstance(out["b"][0], torch.nn.ReLU) and out["b"][1] == 5
    fpn = instantiate({"_target_": "FPN", "in_features": ["res4", "res5"], "out_channels": 8},
                      input_shape={"res4": ShapeSpec(16, 16), "res5": ShapeSpec(32, 32)})
    assert {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()} == {
        "p4": (8, 16), "p5": (8, 32), "p6": (8, 64)}


def test_instantiate_type_error_names_target() -> None:
    with pytest.raises(TypeError, match="building 'torch.nn.Linear' failed"):
        instantiate({"_target_": "torch.nn.Linear", "in_features": 3})


def test_import_modules_error_names_module() -> None:
    with pytest.raises(ImportError, match="custom import 'no_such_module_xyz' failed"):
        import_modules(["no_such_module_xyz"])
