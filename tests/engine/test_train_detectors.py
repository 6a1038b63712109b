"""Slow: the real Faster R-CNN shapes config trains through the engine, and resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detres.config import load_config
from detres.engine import Trainer
from tests.engine.conftest import REPO_ROOT, assert_evaluation_of


def _cfg(shapes: Path, out: Path, max_iter: int, val: bool = True):
    val_keys = ([f"data.val.ann_file={shapes}/annotations/instances_val.json", f"data.val.image_root={shapes}/val"]
                if val else ["data.val=null"])
    return load_config(REPO_ROOT / "configs/examples/shapes_faster_rcnn.yaml", [*val_keys,
        f"data.train.ann_file={shapes}/annotations/instances_train.json", f"data.train.image_root={shapes}/train",
        "data.train_transforms=[{_target_: ResizeShortestEdge, short_edge: [128, 160], max_size: 200}, "
        "{_target_: RandomFlip, prob: 0.5}]", "data.num_workers=0",
        f"train.output_dir={out}", f"train.max_iter={max_iter}", "train.log_period=1", "train.device=cpu",
        "train.tensorboard=false", "train.deterministic=true", "lr_scheduler.max_iters=4", "lr_scheduler.warmup_iters=2",
    ])


@pytest.mark.slow
def test_faster_rcnn_trains_and_resumes_exactly(shapes_dir, tmp_path):
    straight = _cfg(shapes_dir, tmp_path / "a", 4)
    results = Trainer(straight).train()
    recs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    losses = [r for r in recs if "loss" in r]
    assert [r["iter"] for r in losses] == [1, 2, 3, 4]
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"} <= set(losses[0])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    assert_evaluation_of(results, straight, tmp_path / "a/model_final.pth")  # the final weights' COCO stats
    first = _cfg(shapes_dir, tmp_path / "b", 4, val=False)
    first.train.checkpoint_period = 2
    Trainer(first).train()
    t = Trainer(_cfg(shapes_dir, tmp_path / "b", 4, val=False))
    assert t.resume(tmp_path / "b/model_0000002.pth") and t.iter == 2
    t.train()
    b = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    b = [r for r in b if "loss" in r]
    for ra, rb in zip(losses, b):  # RPN/ROI sampling draws from the restored torch RNG
        assert {k: v for k, v in ra.items() if k.startswith("loss")} == {k: v for k, v in rb.items() if k.startswith("loss")}
    wa = torch.load(tmp_path / "a/model_final.pth", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b/model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
