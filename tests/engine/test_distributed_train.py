"""Two processes launched as torchrun does (environment rendezvous, gloo on CPU) train the shapes
Faster R-CNN (ResNet-18 GN, FPN) to the parameters of one process with the same total batch, and
one process resumes from their checkpoint and continues as an uninterrupted one-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import REPO_ROOT

DRIVER = "tests/engine/ddp_train_driver.py"


def _overrides(shapes: Path, out: Path, max_iter: int) -> list[str]:
    """Deterministic data (fixed resize, no flip, no grouping; every image padded to 128 x 128 so an
    image's outputs do not depend on its batch-mates), SGD, and a schedule that ignores max_iter."""
    return [
        f"data.train.ann_file={shapes}/annotations/instances_train.json", f"data.train.image_root={shapes}/train",
        "data.val=null", "data.num_workers=0", "data.aspect_ratio_grouping=false",
        "data.train_transforms=[{_target_: ResizeShortestEdge, short_edge: [64], max_size: 96}]",
        "model.input.size_divisibility=128", "model.backbone.weights=null",
        "optimizer={_target_: torch.optim.SGD, lr: 0.02, momentum: 0.9, weight_decay: 0.0001}",
        "lr_scheduler.max_iters=4", "lr_scheduler.warmup_iters=2",
        f"train.output_dir={out}", f"train.max_iter={max_iter}", "train.batch_size=4", "train.checkpoint_period=2",
        "train.log_period=1", "train.device=cpu", "train.tensorboard=false", "train.deterministic=true",
        "train.progress_bar=false",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args: list[str], world_size: int, log: Path) -> None:
    """Run the driver as ``world_size`` processes with torchrun's environment variables."""
    cmd = [sys.executable, DRIVER, "--config", "configs/examples/shapes_faster_rcnn.yaml", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    if world_size > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size))
    procs = []
    for rank in range(world_size):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if world_size > 1 else env
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=rank_env, stdout=open(f"{log}.{rank}", "w"),
                                      stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * world_size, "\n".join(Path(f"{log}.{r}").read_text()[-3000:] for r in range(world_size))


def _model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and len(a) > 50
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _records(out: Path) -> dict[int, dict]:
    return {r["iter"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.mark.slow  # ~1 min: five launches of the training entry point on 2 cores
def test_two_processes_equal_one_and_resume_in_one(tmp_path: Path) -> None:
    from detres.data.shapes import make_shapes

    shapes = tmp_path / "shapes"
    make_shapes(shapes, num_train=12, num_val=1, seed=0)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(_overrides(shapes, one, 4), 1, tmp_path / "one.log")  # uninterrupted: 4 steps of 4 images
    _train(_overrides(shapes, two, 2), 2, tmp_path / "two.log")  # 2 steps of 2 + 2 images

    start = _model(one / "model_0000002.pth")
    after_two = _model(two / "model_final.pth")
    init_moved = _max_diff(start, _model(one / "model_final.pth"))
    assert init_moved > 1e-3  # the check can fail: steps 3-4 move the weights by far more than the tolerance
    assert _max_diff(start, after_two) < 1e-5

    ck = torch.load(two / "model_final.pth", weights_only=True)
    assert ck["iteration"] == 2 and ck["data_position"] == 2
    # one process resumes the two-process checkpoint and runs steps 3-4
    _train(["--resume", *_overrides(shapes, two, 4)], 1, tmp_path / "resume.log")
    # the resumable twins of the final checkpoints (model_final.pth keeps no optimizer state)
    resumed = torch.load(two / "model_0000004.pth", weights_only=True)
    straight = torch.load(one / "model_0000004.pth", weights_only=True)
    assert resumed["iteration"] == straight["iteration"] == 4 and resumed["data_position"] == straight["data_position"]
    assert _max_diff(straight["model"], resumed["model"]) < 1e-5
    # momentum buffers: gradient-sized, so bounded relative to the largest one (measured 1.6e-5 absolute)
    mom_a = [v["momentum_buffer"] for _, v in sorted(straight["optimizer"]["state"].items())]
    mom_b = [v["momentum_buffer"] for _, v in sorted(resumed["optimizer"]["state"].items())]
    scale = max(float(m.abs().max()) for m in mom_a)
    assert len(mom_a) == len(mom_b) > 50 and scale > 1e-3
    assert max(float((a - b).abs().max()) for a, b in zip(mom_a, mom_b)) <= 1e-3 * scale
    a, b = _records(one), _records(two)
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    for it in (3, 4):  # the resumed steps see the same images at the same learning rate
        assert a[it]["lr"] == b[it]["lr"]
        assert a[it]["loss"] == pytest.approx(b[it]["loss"], rel=1e-4)
