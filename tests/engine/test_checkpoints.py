"""What a run leaves on disk: resumable periodic checkpoints, a final one with only what inference needs,
``model_best.pth`` only when evaluation ran, ``train.keep_last`` old checkpoints; a finished run stops."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from detres.checkpoint import load_checkpoint
from detres.engine import Checkpointer, Trainer


def test_final_is_slim_periodic_resumable_and_pruned(make_cfg):
    cfg = make_cfg("run", max_iter=5, checkpoint_period=1, keep_last=2)
    Trainer(cfg).train()
    out = Path(cfg.train.output_dir)
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    assert not (out / "model_best.pth").exists()  # no evaluation ran, so no best
    periodic, final = Checkpointer.load(out / "model_0000005.pth"), Checkpointer.load(out / "model_final.pth")
    assert periodic["optimizer"]["state"] and periodic["scheduler"]["last_epoch"] == 5
    assert not {"optimizer", "scheduler", "scaler"} & set(final) and final["iteration"] == 5
    assert (out / "model_final.pth").stat().st_size < (out / "model_0000005.pth").stat().st_size
    fresh = Trainer(make_cfg("fresh", max_iter=1)).model
    load_checkpoint(fresh, out / "model_final.pth")  # inference loading works from the slim file
    assert all(torch.equal(v, final["model"][k]) for k, v in fresh.state_dict().items())


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_finished_run_is_not_redone_and_final_continues(make_cfg, caplog):
    cfg = make_cfg("done", max_iter=3)
    Trainer(cfg).train()
    out = Path(cfg.train.output_dir)
    before = (out / "metrics.jsonl").read_text()
    t = Trainer(make_cfg("done", max_iter=3))
    assert t.resume(True) and t.iter == 3
    with caplog.at_level(logging.INFO, logger="detres.train"):
        assert t.train() == {}
    assert "this run is finished" in caplog.text and "iterations 4..3" not in caplog.text
    assert (out / "metrics.jsonl").read_text() == before
    # more iterations from the slim final: said so, LR schedule moved on, training continues
    longer = Trainer(make_cfg("done", max_iter=6))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detres.train"):
        assert longer.resume(True)
    assert "no optimizer state" in caplog.text and "not an exact continuation" in caplog.text
    straight = Trainer(make_cfg("straight", max_iter=6))
    for _ in range(3):
        straight.scheduler.step()
    assert [g["lr"] for g in longer.optimizer.param_groups] == [g["lr"] for g in straight.optimizer.param_groups]
    longer.train()
    iters = [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3, 4, 5, 6]
