"""Ctrl-C during ``tools/train.py``: the current iteration is saved, the run says how to resume and exits
130, and the resumed run ends with exactly the weights of an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from detres.config import load_config
from detres.engine import Checkpointer, Trainer
from tests.engine.conftest import REPO_ROOT, tiny_config


def test_sigint_saves_then_resume_is_exact(shapes_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(shapes_dir, out, max_iter=8, ema=True, ema_decay=0.9, ema_warmup=2)
    cfg["model"]["random_target"] = True
    cfg["data"]["val"] = None
    cfg["custom_imports"] = list(cfg.get("custom_imports", [])) + ["tests.engine.slow_loader", "tests.engine.tiny_detector"]
    cfg["train"]["train_loader"] = "tests.engine.slow_loader.slow_train_loader"
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(REPO_ROOT / "tools/train.py"), "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while not metrics.is_file() or len(metrics.read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "training never logged two iterations"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, log[-3000:]
    stopped = int((out / "last_checkpoint").read_text().strip()[len("model_"):-len(".pth")])
    assert 2 <= stopped < 8, log[-3000:]
    assert f"interrupted at iter {stopped}; resume with `--resume`" in log
    assert "Traceback" not in log
    ck = Checkpointer.load(out / f"model_{stopped:07d}.pth")
    assert ck["iteration"] == stopped and ck["optimizer"]["state"] and ck["scheduler"]["last_epoch"] == stopped
    assert not list(out.glob(".tmp-*")) and not (out / "model_final.pth").exists()

    resumed = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    iters = [json.loads(x)["iter"] for x in metrics.read_text().splitlines()]
    assert iters[-1] == 8 and sorted(set(iters)) == list(range(1, 9))

    # the same run without interruption, in this process (the default loader gives the same batches)
    cfg["train"]["output_dir"] = str(tmp_path / "straight")
    cfg["train"]["train_loader"] = None
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    Trainer(load_config(tmp_path / "s.yaml")).train()
    fa = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)
    fb = torch.load(out / "model_final.pth", weights_only=True)
    for key in ("model", "ema"):
        assert fa[key].keys() == fb[key].keys()
        for k in fa[key]:
            assert torch.equal(fa[key][k], fb[key][k]), f"{key}.{k} differs after the interrupted run"
