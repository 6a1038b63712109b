"""Exact resume (to the bit, on CPU) and crash safety of checkpoint writes."""
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

from detres.engine import Checkpointer, Trainer
from tests.engine.conftest import REPO_ROOT, tiny_config


def _losses(out: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: {k: v for k, v in r.items() if k.startswith("loss") or k == "lr"} for r in recs if "loss" in r}


def test_resume_is_bitwise_exact(make_cfg):
    # random_target draws from the torch RNG inside the model; EMA and momentum carry state too.
    common = dict(ema=True, ema_decay=0.9, ema_warmup=2)
    over = ["model.random_target=true"]
    straight = make_cfg("straight", over, max_iter=6, checkpoint_period=3, **common)
    Trainer(straight).train()  # also writes model_0000003.pth, resumable (model_final.pth is not)
    second = make_cfg("split", over, max_iter=6, **common)
    t = Trainer(second)
    assert t.resume(Path(straight.train.output_dir) / "model_0000003.pth") and t.iter == 3 and t.data_position == 3
    t.train()
    a, b = _losses(Path(straight.train.output_dir)), _losses(Path(second.train.output_dir))
    assert sorted(a) == [1, 2, 3, 4, 5, 6] and sorted(b) == [4, 5, 6]
    for it in range(4, 7):
        assert a[it] == b[it], f"iteration {it}: {a[it]} vs {b[it]}"
    fa = torch.load(Path(straight.train.output_dir) / "model_final.pth", weights_only=True)
    fb = torch.load(Path(second.train.output_dir) / "model_final.pth", weights_only=True)
    for key in ("model", "ema"):
        assert fa[key].keys() == fb[key].keys()
        for k in fa[key]:
            assert torch.equal(fa[key][k], fb[key][k]), f"{key}.{k} differs"
    assert "optimizer" not in fa and "scheduler" not in fa  # the final checkpoint is for inference
    assert fa["iteration"] == 6 and fa["data_position"] == 6 and fa["dataset_meta"]["cat_ids"] == [1, 2, 3]


def test_checkpoint_contents_load_weights_only(make_cfg):
    cfg = make_cfg("contents", max_iter=2, checkpoint_period=1, keep_last=1)
    Trainer(cfg).train()
    out = Path(cfg.train.output_dir)
    names = sorted(p.name for p in out.iterdir())
    assert "model_0000002.pth" in names and "model_final.pth" in names and "config.yaml" in names
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    ck = Checkpointer.load(out / "model_0000002.pth")
    assert ck["format"] == "detres" and ck["iteration"] == 2 and ck["data_position"] == 2
    assert set(ck["rng"][0]) == {"model", "data"} and set(ck["rng"][0]["model"]) >= {"python", "numpy", "torch"}
    assert ck["config"]["train"]["max_iter"] == 2 and ck["scheduler"]["last_epoch"] == 2
    assert ck["dataset_meta"]["cat_ids"] == [1, 2, 3]


def test_sigkill_during_checkpoint_write_keeps_previous(shapes_dir, tmp_path):
    out = tmp_path / "run"
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(shapes_dir, out, max_iter=6, checkpoint_period=2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETRES_CKPT_PAUSE": "model_0000004.pth:120",
           "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(REPO_ROOT / "tools/train.py"), "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tmp_file = out / f".tmp-model_0000004.pth.{proc.pid}"
    deadline = time.time() + 120
    while not tmp_file.is_file() or tmp_file.stat().st_size == 0:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "the writer never reached model_0000004.pth"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # halfway through writing model_0000004.pth
    proc.wait()
    proc.stdout.close()
    assert not (out / "model_0000004.pth").exists() and tmp_file.is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert Checkpointer.load(out / "model_0000002.pth")["iteration"] == 2
    env.pop("DETRES_CKPT_PAUSE")
    res = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "model_0000002.pth at iteration 2" in res.stdout
    assert not tmp_file.exists()  # the partial file is cleaned up at start
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in recs if "loss" in r]
    assert iters == [1, 2, 3, 4, 5, 6]  # the killed run's iterations 3..4 are replaced, not duplicated
    assert Checkpointer.load(out / "model_final.pth")["iteration"] == 6
    assert [r["iter"] for r in recs if "eval/AP" in r] == [6]  # the final COCO evaluation
