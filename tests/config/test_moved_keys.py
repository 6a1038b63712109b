"""Keys that moved into nested head nodes: a YAML key or a command-line override with the old name
fails naming the new place, and arguments the parent passes down may be omitted but not written."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detres.config import ConfigError, load_config
from detres.config.validate import accepted_keys
from detres.modeling.heads.roi_heads import StandardROIHeads
from detres.modeling.heads.rpn import RPN

REPO = Path(__file__).resolve().parents[2]
R18 = REPO / "configs" / "faster_rcnn" / "faster_rcnn_r18_fpn_1x_coco.yaml"


def _child(tmp_path: Path, model_yaml: str) -> Path:
    path = tmp_path / "child.yaml"
    path.write_text(f"_base_: {R18}\nmodel:\n{model_yaml}")
    return path


def test_old_yaml_key_names_its_new_place(tmp_path: Path) -> None:
    cfg = _child(tmp_path, "  roi_heads: {pooler_resolution: 7}\n")
    with pytest.raises(ConfigError, match=r"^model\.roi_heads\.pooler_resolution moved: it is now "
                                          r"model\.roi_heads\.box_pooler\.output_size"):
        load_config(cfg)
    cfg = _child(tmp_path, "  rpn: {anchor_sizes: [[32]]}\n")
    with pytest.raises(ConfigError, match=r"model\.rpn\.anchor_sizes moved: it is now model\.rpn\.anchor_generator\.sizes"):
        load_config(cfg)


@pytest.mark.parametrize("override, new", [
    ("model.roi_heads.pooler_resolution=7", "model.roi_heads.box_pooler.output_size"),
    ("model.rpn.fg_iou=0.6", "model.rpn.matcher.high"),
    ("model.roi_heads.fc_dims=[256]", "model.roi_heads.box_head.fc_dims"),
    ("+model.roi_heads.head_norm=gn", "model.roi_heads.box_head.norm"),  # forced: caught by validation
    ("model.roi_heads.pooler.sampling_ratio=2", "model.roi_heads.box_pooler"),  # the old attribute name
])
def test_old_override_key_names_its_new_place(override: str, new: str) -> None:
    old = override.lstrip("+").split("=")[0].replace(".pooler.sampling_ratio", ".pooler")
    with pytest.raises(ConfigError, match=f"^{old.replace('.', '[.]')} moved: it is now {new.replace('.', '[.]')}"):
        load_config(R18, [override])


@pytest.mark.parametrize("cls", [RPN, StandardROIHeads])
def test_every_moved_key_points_at_a_valid_key_of_the_base_config(cls: type) -> None:
    cfg = load_config(R18)
    node = cfg.model.rpn if cls is RPN else cfg.model.roi_heads
    for old, new in cls.moved_keys.items():
        assert old not in node and old not in accepted_keys(node._target_)
        parent, _, last = new.rpartition(".")
        child = OmegaConf.select(node, parent) if parent else node
        assert child is not None and last in (child if not parent else accepted_keys(child._target_)), (old, new)


def test_injected_arguments_are_omitted_and_refused_when_written(tmp_path: Path) -> None:
    cfg = load_config(R18)  # no strides / channels / resolution / in_dim anywhere
    assert "strides" not in cfg.model.roi_heads.box_pooler and "channels" not in cfg.model.roi_heads.box_head
    with pytest.raises(ConfigError, match=r"model\.roi_heads\.box_head\.channels.*passed in by model\.roi_heads"):
        load_config(R18, ["+model.roi_heads.box_head.channels=8"])
    with pytest.raises(ConfigError, match=r"'channels' is passed in"):
        load_config(R18, ["model.roi_heads.box_head.channels=8"])
    with pytest.raises(ConfigError, match=r"model\.rpn\.anchor_generator\.strides.*remove `strides`"):
        load_config(_child(tmp_path, "  rpn: {anchor_generator: {strides: [4, 8, 16, 32, 64]}}\n"))


def test_node_override_with_another_target_replaces_the_node(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("model: {_target_: ResNet, depth: 18, out_features: [res4, res5]}\n")
    cfg = load_config(base, ["model={_target_: TimmBackbone, name: resnet18d}"])
    assert OmegaConf.to_container(cfg.model) == {"_target_": "TimmBackbone", "name": "resnet18d"}
    cfg = load_config(base, ["model={_target_: ResNet, depth: 34}"])  # same target: merged
    assert cfg.model.depth == 34 and cfg.model.out_features == ["res4", "res5"]
