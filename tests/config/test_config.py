"""load_config: _base_ inheritance, interpolation, overrides, custom imports, and every error it
must raise before any work starts, each naming the key, file or name at fault."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detres.config.args import add_config_args, load_config_from_args
from detres.config import ConfigError, load_config, save_config
from detres.registry import BACKBONES, instantiate

BASE = """
num_classes: 3
model:
  _target_: ResNet
  depth: 18
  num_classes: ${num_classes}
  out_features: [res4, res5]
train:
  max_iter: 10
"""


def write(dir_: Path, name: str, text: str) -> Path:
    path = dir_ / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    return write(tmp_path, "base.yaml", BASE)


# ---------------------------------------------------------------------------------- behaviour
def test_base_inheritance_interpolation_and_defaults(tmp_path: Path, base: Path) -> None:
    write(tmp_path, "other.yaml", "train: {batch_size: 7, max_iter: 20}\n")
    child = write(tmp_path, "sub/child.yaml", "_base_: [../base.yaml, ../other.yaml]\nmodel: {depth: 34}\nnum_classes: 5\n")
    cfg = load_config(child)
    assert cfg.model.depth == 34 and cfg.model.out_features == ["res4", "res5"]
    assert cfg.train.batch_size == 7 and cfg.train.max_iter == 20  # later bases win
    assert cfg.model.num_classes == 5  # interpolation resolves against the merged tree
    assert cfg.train.seed == 42 and cfg.eval.batch_size == 1  # schema defaults filled in
    model = instantiate(cfg.model)
    assert model.fc.out_features == 5 and model.depth == 34


def test_base_as_string_and_two_levels_allowed(tmp_path: Path, base: Path) -> None:
    write(tmp_path, "mid.yaml", "_base_: base.yaml\ntrain: {max_iter: 11}\n")
    top = write(tmp_path, "top.yaml", "_base_: mid.yaml\ntrain: {max_iter: 12}\n")
    cfg = load_config(top)
    assert cfg.train.max_iter == 12 and cfg.model.depth == 18


def test_dotlist_overrides(base: Path) -> None:
    cfg = load_config(base, ["model.depth=50", "train.max_iter=3", "model.norm=bn",
                             "model.out_features=[res3,res5]", "num_classes=9"])
    assert cfg.model.depth == 50 and cfg.model.norm == "bn" and cfg.train.max_iter == 3
    assert list(cfg.model.out_features) == ["res3", "res5"] and cfg.model.num_classes == 9


def test_target_switch_replaces_parent_node(tmp_path: Path, base: Path) -> None:
    child = write(tmp_path, "timm.yaml", "_base_: base.yaml\nmodel: {_target_: TimmBackbone, name: resnet18d}\n")
    cfg = load_config(child)
    assert dict(cfg.model) == {"_target_": "TimmBackbone", "name": "resnet18d"}  # no leaked `depth`


def test_save_config_writes_resolved_yaml(tmp_path: Path, base: Path) -> None:
    cfg = load_config(base)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = OmegaConf.load(tmp_path / "out" / "config.yaml")
    assert again.model.num_classes == 3 and again.train.max_iter == 10


# ---------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_missing_base_file(tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", "_base_: [gone.yaml]\n")
    with pytest.raises(FileNotFoundError) as e:
        load_config(child)
    assert "child.yaml" in str(e.value) and "'gone.yaml'" in str(e.value)


def test_base_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml -> " in str(e.value) and "b.yaml" in str(e.value)


def test_base_chain_of_any_depth_merges_in_order(tmp_path: Path, base: Path) -> None:
    write(tmp_path, "l1.yaml", "_base_: base.yaml\ntrain: {max_iter: 1}\nmodel: {depth: 34}\n")
    write(tmp_path, "l2.yaml", "_base_: l1.yaml\ntrain: {max_iter: 2}\n")
    top = write(tmp_path, "l3.yaml", "_base_: l2.yaml\ntrain: {max_iter: 3}\n")
    cfg = load_config(top)  # depth 3 below the top file
    assert cfg.train.max_iter == 3 and cfg.model.depth == 34 and cfg.model.out_features == ["res4", "res5"]
    assert load_config(tmp_path / "l2.yaml").train.max_iter == 2


def test_base_diamond_is_not_a_cycle_but_a_longer_cycle_is(tmp_path: Path, base: Path) -> None:
    write(tmp_path, "left.yaml", "_base_: base.yaml\ntrain: {max_iter: 4}\n")
    write(tmp_path, "right.yaml", "_base_: base.yaml\ntrain: {batch_size: 5}\n")
    top = write(tmp_path, "top.yaml", "_base_: [left.yaml, right.yaml]\n")
    cfg = load_config(top)
    assert cfg.train.max_iter == 10 and cfg.train.batch_size == 5  # right re-merges base after left
    write(tmp_path, "c1.yaml", "_base_: c2.yaml\n")
    write(tmp_path, "c2.yaml", "_base_: c3.yaml\n")
    write(tmp_path, "c3.yaml", "_base_: c1.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*c1\.yaml -> .*c2\.yaml -> .*c3\.yaml -> .*c1\.yaml"):
        load_config(tmp_path / "c1.yaml")


@pytest.mark.parametrize(
    "override, nearest",
    [("model.dpeth=3", "model.depth"), ("train.max_itr=3", "train.max_iter"), ("trian.max_iter=3", "train")],
)
def test_unknown_override_key_names_nearest(base: Path, override: str, nearest: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(base, [override])
    msg = str(e.value)
    assert f"override '{override.split('=')[0]}'" in msg and f"did you mean {nearest}?" in msg


def test_override_not_key_value(base: Path) -> None:
    with pytest.raises(ConfigError, match="'model.depth' is not of the form key=value"):
        load_config(base, ["model.depth"])


def test_unknown_target_names_close_matches(base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(base, ["model._target_=ResNett"])
    msg = str(e.value)
    assert msg.startswith("model._target_:") and "'ResNett'" in msg and "did you mean ResNet" in msg


def test_unimportable_dotted_target(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {_target_: my_missing_pkg.nets.MyBackbone}\n")
    with pytest.raises(ConfigError, match="model._target_: _target_ 'my_missing_pkg.nets.MyBackbone'"):
        load_config(cfg)


def test_unknown_constructor_argument(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {_target_: ResNet, depht: 18}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert msg.startswith("model.depht:") and "'ResNet' has no argument 'depht'" in msg and "depth" in msg


def test_unknown_argument_in_nested_node(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", """
        model:
          backbone: {_target_: ResNet, depth: 18}
          neck: {_target_: FPN, out_channel: 64}
    """)
    with pytest.raises(ConfigError, match=r"model\.neck\.out_channel: 'FPN' has no argument 'out_channel'; "
                                          r"did you mean out_channels\?"):
        load_config(cfg)


def test_missing_required_argument(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {backbone: {_target_: TimmBackbone, out_indices: [1, 2]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "model.backbone: missing required key 'name' for 'TimmBackbone'" in str(e.value)


def test_injected_args_are_not_required(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {neck: {_target_: FPN}}\n")  # input_shape comes from the builder
    assert load_config(cfg).model.neck._target_ == "FPN"


@pytest.mark.parametrize(
    "override, key, expected",
    [("model.depth=abc", "model.depth", "int"), ("model.stride_in_1x1=3", "model.stride_in_1x1", "bool"),
     ("train.max_iter=1.5", "train.max_iter", "int"), ("model.out_features=res4", "model.out_features", "Sequence")],
)
def test_type_errors_name_the_key(base: Path, override: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(base, [override])
    msg = str(e.value)
    assert msg.startswith(f"{key}: expected") and expected in msg


def test_unknown_top_level_and_section_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainn: unknown top-level key; did you mean train"):
        load_config(write(tmp_path, "a.yaml", "trainn: {max_iter: 1}\n"))
    with pytest.raises(ConfigError, match=r"train.batchsize: unknown key; did you mean batch_size"):
        load_config(write(tmp_path, "b.yaml", "train: {batchsize: 1}\n"))


def test_bad_interpolation_names_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {_target_: ResNet, num_classes: '${num_clases}'}\n")
    with pytest.raises(ConfigError, match="interpolation failed at 'model.num_classes'"):
        load_config(cfg)


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(write(tmp_path, "bad.yaml", "model: {depth: [1, 2\n"))


# ---------------------------------------------------------------------------------- user modules
USER_MODULE = '''
from torch import nn
from detres.registry import BACKBONES
from detres.structures import ShapeSpec


@BACKBONES.register()
class {name}(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=4, padding=1)

    def output_shape(self):
        return {{"res2": ShapeSpec(self.conv.out_channels, 4)}}

    def forward(self, x):
        return {{"res2": self.conv(x)}}
'''


def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mod: str, cls: str) -> None:
    (tmp_path / f"{mod}.py").write_text(USER_MODULE.format(name=cls))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, mod, raising=False)


def test_custom_imports_registers_user_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path, monkeypatch, "detres_cfgtest_user_a", "CfgTestBackboneA")
    cfg = write(tmp_path, "c.yaml", """
        custom_imports: [detres_cfgtest_user_a]
        model:
          backbone: {_target_: CfgTestBackboneA, width: 6}
          neck: {_target_: FPN, in_features: [res2], out_channels: 4}
    """)
    cfg = load_config(cfg, ["model.backbone.width=5"])
    assert "CfgTestBackboneA" in BACKBONES
    from detres.modeling import build_backbone_and_neck

    bb, neck = build_backbone_and_neck(cfg.model.backbone, cfg.model.neck)
    assert bb.conv.out_channels == 5 and neck.lateral_convs[0][0].in_channels == 5


def test_unregistered_user_class_without_import_fails(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "model: {backbone: {_target_: CfgTestBackboneNeverImported}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "model.backbone._target_" in str(e.value) and "custom_imports" in str(e.value)


def test_import_flag_loads_user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path, monkeypatch, "detres_cfgtest_user_b", "CfgTestBackboneB")
    cfg_path = write(tmp_path, "c.yaml", "model: {backbone: {_target_: CfgTestBackboneB}}\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", str(cfg_path), "--import", "detres_cfgtest_user_b", "model.backbone.width=3"])
    cfg = load_config_from_args(args)
    assert cfg.model.backbone.width == 3
    assert instantiate(cfg.model.backbone).conv.out_channels == 3


def test_bad_custom_import_names_module(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.yaml", "custom_imports: [no_such_user_module_42]\n")
    with pytest.raises(ImportError, match="custom import 'no_such_user_module_42' failed"):
        load_config(cfg)
