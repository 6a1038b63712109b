"""Trainer features: EMA used for evaluation, NaN guard, clipping, bf16 autocast, logs and plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detres.checkpoint import load_checkpoint
from detres.engine import NonFiniteLossError, Trainer
from tests.engine.conftest import assert_evaluation_of
from tests.engine.tiny_detector import TinyDetector


def test_ema_differs_from_raw_and_is_what_evaluation_uses(make_cfg):
    seen = []

    def evaluate(model, trainer):
        seen.append(model)
        return {"AP": 0.1 * len(seen)}

    cfg = make_cfg("ema", max_iter=4, ema=True, ema_decay=0.9, ema_warmup=0, eval_period=2)
    t = Trainer(cfg, evaluate_fn=evaluate)
    t.train()
    assert len(seen) == 2 and all(m is t.ema.module for m in seen)  # at iteration 2 and the final one
    raw, ema = t.model.state_dict(), t.ema.state_dict()
    diff = max(float((raw[k] - ema[k]).abs().max()) for k in raw if raw[k].is_floating_point())
    assert diff > 1e-4
    out = Path(cfg.train.output_dir)
    ck = torch.load(out / "model_final.pth", weights_only=True)
    assert all(torch.equal(ck["ema"][k], ema[k]) for k in ema)
    assert all(torch.equal(ck["model"][k], raw[k]) for k in raw)
    fresh = TinyDetector(num_classes=3)
    load_checkpoint(fresh, out / "model_final.pth", use_ema=True)
    assert all(torch.equal(v, ema[k]) for k, v in fresh.state_dict().items())
    # the best checkpoint is the final evaluation's (AP 0.2 > 0.1) and records it
    best = torch.load(out / "model_best.pth", weights_only=True)["best"]
    assert best == {"metric": "AP", "value": 0.2, "iteration": 4}
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/AP" in line]
    assert [(e["iter"], e["eval/AP"]) for e in evals] == [(2, 0.1), (4, 0.2)]
    assert json.loads((out / "eval_final.json").read_text())["AP"] == 0.2


def test_nan_guard_stops_with_iteration_terms_and_image_ids(make_cfg):
    cfg = make_cfg("nan", ["optimizer.lr=1e38", "optimizer.momentum=0.0", "optimizer.weight_decay=0.0"], max_iter=5)
    t = Trainer(cfg)
    with pytest.raises(NonFiniteLossError) as e:
        t.train()
    msg = str(e.value)
    assert msg.startswith("iteration ") and "non-finite loss" in msg
    assert "loss_box=" in msg and "loss_cls=" in msg and "image ids [" in msg
    it = int(msg.split()[1].rstrip(":"))
    assert 2 <= it <= 5 and t.iter == it - 1


def test_clip_grad_norm_bounds_the_step(make_cfg):
    t = Trainer(make_cfg("clip", max_iter=1, clip_grad=1e-3))
    t._loader = t.build_train_loader()
    stats = t.runner([t._next_batch()], 1)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.model.parameters() if p.grad is not None]))
    assert stats["grad_norm"] > 1e-3 and float(total) <= 1e-3 * 1.001


def test_bf16_autocast_trains(make_cfg):
    t = Trainer(make_cfg("bf16", max_iter=2, amp="bf16"))
    t._loader = t.build_train_loader()
    seen = []
    hook = t.model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    stats = t.runner([t._next_batch()], 1)
    hook.remove()
    assert seen == [torch.bfloat16] and torch.isfinite(torch.tensor(stats["loss"]))
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay fp32


def test_metrics_jsonl_fields_and_plot(make_cfg, tmp_path):
    from detres.cli.plot_logs import main as plot_main

    cfg = make_cfg("logs", with_val=True, max_iter=3, log_period=2)
    final = Trainer(cfg).train()  # the real COCO evaluator on the 6 val images
    out = Path(cfg.train.output_dir)
    assert_evaluation_of(final, cfg, out / "model_final.pth")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in lines if "loss" in r]
    assert [r["iter"] for r in recs] == [2, 3]  # every log_period and the last iteration
    assert [r["iter"] for r in lines if "eval/AP" in r] == [3]
    assert json.loads((out / "eval_final.json").read_text())["AP"] == final["AP"]
    for key in ("lr", "loss", "loss_box", "loss_cls", "time", "data_time", "eta_s", "memory_mb"):
        assert key in recs[0]
    assert abs(recs[0]["loss"] - (recs[0]["loss_box"] + recs[0]["loss_cls"])) < 1e-6
    png = tmp_path / "curves.png"
    assert plot_main(["--logs", str(out / "metrics.jsonl"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_size_must_split_over_accumulation(make_cfg):
    with pytest.raises(ValueError, match="train.batch_size=3"):
        Trainer(make_cfg("bad", batch_size=3, accumulate=2))


def test_channels_last_training_matches_nchw(make_cfg):
    """``train.channels_last`` (default) trains NHWC weights: same losses and updated weights as NCHW
    to float rounding, and checkpoints that load into a plain model."""
    results = {}
    for cl in (True, False):
        t = Trainer(make_cfg(f"cl{cl}", max_iter=1, channels_last=cl))
        t._loader = t.build_train_loader()
        conv = t.model.backbone.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == cl and conv.is_contiguous() != cl
        stats = t.runner([t._next_batch()], 1)
        results[cl] = (stats["loss"], {k: v.clone() for k, v in t.model.state_dict().items()})
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    for k, v in results[False][1].items():
        torch.testing.assert_close(results[True][1][k], v, rtol=1e-4, atol=1e-6)
    fresh = TinyDetector(num_classes=3)
    fresh.load_state_dict(results[True][1])
    assert fresh.backbone.conv1.weight.is_contiguous()
