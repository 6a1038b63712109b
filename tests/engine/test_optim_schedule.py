"""Param groups (backbone LR multiplier, no decay on norms/biases, overrides), warmup schedules,
atomic writes and checkpoint retention."""
from __future__ import annotations

import math

import pytest
import torch

from detres.engine import Checkpointer, WarmupCosineLR, WarmupMultiStepLR, build_optimizer
from detres.engine.checkpointer import atomic_write_bytes, get_rng_state, set_rng_state
from tests.engine.tiny_detector import TinyDetector


def _group_of(opt: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in opt.param_groups if name in g["names"])


def test_param_groups():
    model = TinyDetector(num_classes=3)
    node = {"_target_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": "1e-4"}
    train = {"backbone_lr_mult": 0.1, "weight_decay_norm": 0.0, "weight_decay_bias": 0.0,
             "param_overrides": {"cls": {"lr_mult": 2.0, "weight_decay": 0.5}}}
    opt = build_optimizer(node, model, train)
    assert isinstance(opt, torch.optim.AdamW)
    g = _group_of(opt, "backbone.layer1.0.conv1.weight")
    assert g["lr"] == pytest.approx(1e-5) and g["weight_decay"] == 1e-4
    assert _group_of(opt, "head.1.weight")["weight_decay"] == 0.0  # GroupNorm
    assert _group_of(opt, "box.bias")["weight_decay"] == 0.0 and _group_of(opt, "box.weight")["weight_decay"] == 1e-4
    g = _group_of(opt, "cls.weight")
    assert g["lr"] == pytest.approx(2e-4) and g["weight_decay"] == 0.5 and "cls.bias" in g["names"]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="match no trainable parameter"):
        build_optimizer(node, model, {"param_overrides": {"head.query_embed": {"lr_mult": 0.1}}})


def test_warmup_multistep_and_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupMultiStepLR(opt, milestones=[4, 6], gamma=0.1, warmup_iters=2, warmup_factor=0.1)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    opt = torch.optim.SGD([p], lr=2.0)
    sched = WarmupCosineLR(opt, max_iters=10, warmup_iters=0, min_lr_factor=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0) and lrs[10] == pytest.approx(0.2)
    assert lrs[5] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))


def test_atomic_write_and_keep_last(tmp_path):
    atomic_write_bytes(tmp_path / "f.bin", b"old")
    atomic_write_bytes(tmp_path / "f.bin", b"new contents")
    assert (tmp_path / "f.bin").read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary left
    ck = Checkpointer(tmp_path / "run", keep_last=2)
    for it in (1, 2, 3, 4):
        ck.save(f"model_{it:07d}.pth", {"model": {"w": torch.full((2,), float(it))}, "iteration": it})
    ck.save("model_best.pth", {"model": {"w": torch.zeros(2)}, "iteration": 2}, update_last=False)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["last_checkpoint", "model_0000003.pth", "model_0000004.pth", "model_best.pth"]
    assert ck.latest().name == "model_0000004.pth" and Checkpointer.load(ck.latest())["iteration"] == 4


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = get_rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
