"""Every YAML under configs/ loads, validates and builds (shrunk by overrides); models run a forward
on a small random image in eval mode. Configs are globbed at test time so new ones are covered."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detres.config import load_config
from detres.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def _shrink(cfg) -> list[str]:
    """Overrides that make a config cheap to build: ResNet-18, small test size, no weight files."""
    inp = cfg.model.get("input")
    if inp is not None and inp.get("fixed_size_test") is not None:  # RT-DETR's fixed-size input
        out = ["model.input.fixed_size_test=[96,128]"]
    else:
        out = ["model.input.min_size_test=96", "model.input.max_size_test=128"] if inp is not None else []
    bb = cfg.model.get("backbone")
    if bb is not None and bb.get("_target_") == "ResNet":
        out += ["model.backbone.depth=18", "model.backbone.weights=null"]
    if bb is not None and bb.get("_target_") == "TimmBackbone":
        out += ["model.backbone.weights=null"]
    return out


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_runs(path: str) -> None:
    cfg = load_config(REPO / path)  # a _target_ that cannot be imported fails here, naming it
    if "model" not in cfg:
        return
    cfg = load_config(REPO / path, _shrink(cfg))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if hasattr(model, "inference"):
        with torch.no_grad():
            out = model([torch.randint(0, 256, (3, 80, 112), dtype=torch.uint8)])
        assert len(out) == 1 and {"boxes", "scores", "labels"} <= set(out[0])
        assert out[0]["boxes"].shape[-1] == 4 and out[0]["boxes"].shape[0] == out[0]["scores"].shape[0]


def test_num_classes_auto_reads_the_dataset(tmp_path: Path) -> None:
    """`num_classes: auto` on the shapes example: K and the class names come from the generated json,
    and the model built from it has K classes."""
    from detres.data.shapes import make_shapes

    make_shapes(tmp_path, num_train=2, num_val=1, seed=0)
    cfg = load_config(REPO / "configs/examples/shapes_faster_rcnn.yaml", [
        "num_classes=auto", "class_names=null", f"data.train.ann_file={tmp_path}/annotations/instances_train.json",
        f"data.train.image_root={tmp_path}/train", "model.backbone.weights=null"])
    assert cfg.num_classes == 3 and len(cfg.class_names) == 3
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 + 1
