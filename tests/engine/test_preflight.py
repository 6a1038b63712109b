"""Start-up checks: a frozen backbone without weights is refused; missing images are named before step 1;
a truncated JPEG stops training and the demo with one clean line (exit code 2)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detres.cli import main as detres_main
from detres.config import load_config
from detres.data.io import ImageReadError
from detres.engine import Trainer
from detres.engine.preflight import FrozenRandomBackboneError, check_backbone_initialised
from detres.modeling import build_model
from tests.engine.conftest import REPO_ROOT, tiny_config

SHAPES = REPO_ROOT / "configs/examples/shapes_faster_rcnn.yaml"
FROZEN = ["model.backbone.norm=frozen_bn", "model.backbone.freeze_at=2"]


def test_frozen_random_backbone_refused(tmp_path, capsys):
    cfg = load_config(SHAPES, [*FROZEN, f"train.output_dir={tmp_path / 'r'}", "train.device=cpu"])
    with pytest.raises(FrozenRandomBackboneError) as e:
        Trainer(cfg).train()
    msg = str(e.value)
    assert "freeze_at: 2" in msg and "model.backbone.weights=PATH" in msg and "tools/convert.py" in msg
    assert "model.backbone.norm=gn model.backbone.freeze_at=0" in msg and "docs/training.md" in msg
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    rc = detres_main(["train", "--config", str(SHAPES), *FROZEN, f"train.output_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model.backbone.weights=PATH" in err[0]


def test_frozen_backbone_with_weights_and_example_configs_pass(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), weights)  # a torchvision ImageNet file has this layout
    cfg = load_config(SHAPES, [*FROZEN, f"model.backbone.weights={weights}"])
    check_backbone_initialised(cfg, build_model(cfg))
    for name in ("shapes_faster_rcnn", "shapes_detr", "bccd_faster_rcnn_r18_fpn"):  # GN, freeze_at 0: train as they are
        cfg = load_config(REPO_ROOT / f"configs/examples/{name}.yaml")
        check_backbone_initialised(cfg, build_model(cfg))


def _copy_shapes(shapes_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "shapes"
    shutil.copytree(shapes_dir, dst)
    return dst


def _write_cfg(shapes: Path, tmp_path: Path, **data: object) -> Path:
    cfg = tiny_config(shapes, tmp_path / "run", max_iter=1)
    cfg["data"]["val"] = None
    cfg["data"].update(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_missing_image_found_at_start_up(shapes_dir, tmp_path, capsys):
    shapes = _copy_shapes(shapes_dir, tmp_path)
    gone = sorted((shapes / "train").iterdir())[5]
    gone.unlink()
    cfg_path = _write_cfg(shapes, tmp_path)
    with pytest.raises(ImageReadError, match="image id"):
        Trainer(load_config(cfg_path)).train()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before any step
    assert detres_main(["train", "--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and gone.name in err[0] and "1 of 16 images" in err[0] and "on_bad_image=skip" in err[0]
    Trainer(load_config(cfg_path, ["data.on_bad_image=skip"])).train()  # the policy is respected


def test_truncated_jpeg_clean_error_in_training_and_demo(shapes_dir, tmp_path, capsys):
    shapes = _copy_shapes(shapes_dir, tmp_path)
    for img in (shapes / "train").iterdir():
        img.write_bytes(img.read_bytes()[:600])
    cfg_path = _write_cfg(shapes, tmp_path, num_workers=1)  # the error comes through a loader worker
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, str(REPO_ROOT / "tools/train.py"), "--config", str(cfg_path)],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image ") and "truncated JPEG" in last and "image id" in last
    bad = sorted((shapes / "train").iterdir())[0]
    rc = detres_main(["demo", "--config", str(cfg_path), "--random-weights", "--input", str(bad),
                      "--out", str(tmp_path / "demo"), "--no-optimize"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error:") and "truncated JPEG" in err[-1] and bad.name in err[-1]
