"""The ``detres`` console commands as a user runs them: list, print-config, and a typo's exit code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def _run(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    exe = Path(sys.executable).parent / "detres"  # the console script, as a user runs it
    return subprocess.run([str(exe), *args], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("num_classes: 4\nmodel: {_target_: ResNet, depth: 18, num_classes: '${num_classes}'}\n")
    return path


def test_list(repo_root: Path) -> None:
    r = _run(repo_root, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "BACKBONES:" in lines and "NECKS:" in lines
    assert {"  ResNet", "  TimmBackbone", "  TorchvisionBackbone", "  FPN", "  ChannelMapper"} <= set(lines)


def test_print_config_resolves(repo_root: Path, tmp_path: Path) -> None:
    r = _run(repo_root, "print-config", "--config", str(_config(tmp_path)), "model.depth=34", "num_classes=7")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["model"] == {"_target_": "ResNet", "depth": 34, "num_classes": 7}
    assert cfg["train"]["seed"] == 42


def test_config_typo_exit_code_2_one_line(repo_root: Path, tmp_path: Path) -> None:
    r = _run(repo_root, "print-config", "--config", str(_config(tmp_path)), "model.dpeth=34")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.dpeth" in lines[0] and "did you mean model.depth" in lines[0]
    r = _run(repo_root, "nosuchcmd")
    assert r.returncode == 2 and "unknown command 'nosuchcmd'" in r.stderr
