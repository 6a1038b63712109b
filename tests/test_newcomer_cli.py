"""What a first-time user meets on the command line: command list with descriptions, plain-text help,
demo refusing to run without weights, config errors under the key typed, an empty dataset, a garbage
checkpoint, a missing optional extra, and an eval progress bar that writes no carriage returns to logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detres.cli import COMMANDS
from detres.cli import main as detres_main
from detres.config import ConfigError, load_config


def test_help_lists_commands_with_descriptions_in_plain_text(capsys):
    assert detres_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        line = next(x for x in out.splitlines() if x.split() and x.split()[0] == name)
        assert len(line.split()) > 3, line  # a description follows the name
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            detres_main([name, "--help"])
        assert "``" not in capsys.readouterr().out, name


def test_demo_requires_weights(repo_root, capsys):
    with pytest.raises(SystemExit) as e:
        detres_main(["demo", "--config", "configs/examples/shapes_faster_rcnn.yaml", "--input", "x.jpg"])
    assert e.value.code == 2 and "--weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        detres_main(["demo", "--help"])
    assert "--random-weights" in capsys.readouterr().out


def test_bad_value_reported_under_the_key_typed(repo_root):
    with pytest.raises(ConfigError, match=r"^train\.max_iter: expected int"):
        load_config(repo_root / "configs/examples/shapes_faster_rcnn.yaml", ["train.max_iter=abc"])


def test_num_classes_auto_replaces_inherited_class_names(repo_root, tmp_path):
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], "annotations": [],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cow"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    cfg_path = tmp_path / "mine.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "_base_": [str(repo_root / "configs/examples/shapes_faster_rcnn.yaml")], "num_classes": "auto",
        "data": {"train": {"_target_": "CocoDetection", "ann_file": str(tmp_path / "a.json"), "image_root": str(tmp_path)}}}))
    cfg = load_config(cfg_path)
    assert cfg.num_classes == 3 and list(cfg.class_names) == ["cat", "dog", "cow"]


def test_check_dataset_empty_is_an_error(tmp_path, capsys):
    (tmp_path / "e.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    assert detres_main(["check-dataset", "--ann", str(tmp_path / "e.json")]) == 1
    out = capsys.readouterr().out
    assert "'images' is empty" in out and "problems found" in out and "clean" not in out


@pytest.mark.parametrize("content", [os.urandom(2000), b"hello, not a checkpoint\n"])
def test_garbage_checkpoint_named_never_weights_only_false(tmp_path, content):
    from detres.checkpoint import load_checkpoint
    from detres.engine import Checkpointer
    from torch import nn

    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    for load in (lambda: load_checkpoint(nn.Linear(2, 2), bad), lambda: Checkpointer.load(bad)):
        with pytest.raises(ValueError) as e:
            load()
        msg = str(e.value)
        assert str(bad) in msg and "is not a checkpoint" in msg and "weights_only" not in msg


def _no_matplotlib_env(tmp_path: Path, repo_root: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None  # import fails\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo_root}", "OMP_NUM_THREADS": "1"}


def test_plot_logs_without_matplotlib_one_line_hint(tmp_path, repo_root):
    (tmp_path / "m.jsonl").write_text('{"iter": 1, "loss": 1.0}\n')
    r = subprocess.run([sys.executable, "tools/plot_logs.py", "--logs", str(tmp_path / "m.jsonl"), "--out",
                        str(tmp_path / "c.png")], cwd=repo_root, env=_no_matplotlib_env(tmp_path, repo_root),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and r.stderr.strip().splitlines() == [
        "plot-logs: plotting loss curves needs matplotlib, which is not installed: pip install 'detres[viz]'"]


def test_eval_progress_bar_only_on_a_terminal(capsys):
    from detres.evaluation.inference import inference_on_dataset
    from torch import nn

    class Ev:
        def reset(self): ...
        def process(self, batch, outputs): ...
        def evaluate(self): return {}

    class Model(nn.Module):
        def forward(self, images): return [{} for _ in images]

    import torch
    from types import SimpleNamespace
    loader = [[SimpleNamespace(image=torch.zeros(3, 4, 4))] for _ in range(3)]
    inference_on_dataset(Model(), loader, Ev(), progress=True)  # pytest's stderr is not a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "eval" not in captured.err


def test_main_job_goes_on_without_matplotlib(tmp_path, repo_root, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_job", repo_root / "tools/main_job.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    for k, v in _no_matplotlib_env(tmp_path, repo_root).items():
        monkeypatch.setenv(k, v)  # the steps' subprocesses inherit it
    (tmp_path / "m.jsonl").write_text('{"iter": 1, "loss": 1.0}\n')
    plot = [sys.executable, "tools/plot_logs.py", "--logs", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "c.png")]
    job.step("4/5 loss curve", plot, optional=True)  # returns: the job goes on to the next step
    assert job.SKIPPED == ["4/5 loss curve"] and not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit) as e:  # a real failure still stops the job
        job.step("eval", [sys.executable, "tools/plot_logs.py", "--logs", str(tmp_path / "none.jsonl")])
    assert e.value.code == 2
