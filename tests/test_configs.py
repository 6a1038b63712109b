"""Every YAML under configs/ loads, validates and builds (shrunk by overrides); models run a forward
on a small random image in eval mode. Configs are globbed at test time so new ones are covered."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detres.config import ConfigError, load_config
from detres.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def _shrink(cfg) -> list[str]:
    """Overrides that make a config cheap to build: ResNet-18, small test size, no weight files."""
    out = ["model.input.min_size_test=96", "model.input.max_size_test=128"] if "input" in cfg.model else []
    bb = cfg.model.get("backbone")
    if bb is not None and bb.get("_target_") == "ResNet":
        out += ["model.backbone.depth=18", "model.backbone.weights=null"]
    if bb is not None and bb.get("_target_") == "TimmBackbone":
        out += ["model.backbone.weights=null"]
    return out


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_runs(path: str) -> None:
    if "num_classes: auto" in (REPO / path).read_text():
        # TODO(lead): generate the shapes dataset in a tmp dir; `auto` reads its json at load time.
        pytest.skip(f"{path}: num_classes: auto needs the dataset's annotation json on disk (make demo covers it)")
    try:
        cfg = load_config(REPO / path)
    except ConfigError as e:
        if "is neither registered nor importable" in str(e) and "detres." in str(e):
            pytest.skip(f"{path}: a _target_ from a module not written yet: {e}")
        raise
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
