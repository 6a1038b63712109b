"""``detres benchmark model``: --json output parses, has the figures, and the torchvision comparison
finds identical detections on converted weights."""
from __future__ import annotations

import json

import pytest
import torch

from detres.benchmark.reference import build_torchvision_frcnn, summarize, time_alternating
from detres.cli.benchmark import main
from detres.config import load_config
from detres.modeling.build import build_model

TV = "configs/faster_rcnn/faster_rcnn_r50_fpn_torchvision_coco.yaml"
R18 = "configs/faster_rcnn/faster_rcnn_r18_fpn_1x_coco.yaml"
SMALL = ["model.input.min_size_test=128", "model.input.max_size_test=160"]


def _run(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_model_json_keys(capsys) -> None:
    r = _run(capsys, ["model", "--json", "--config", R18, *SMALL, "model.neck.out_channels=64",
                      "--image-size", "96", "128", "--batch", "2", "--iters", "2", "--warmup", "0"])
    for key in ("latency_s", "latency_iqr_s", "cpu_s", "peak_mem_mb", "params", "gflops",
                "throughput_img_s", "batch_latency_s"):
        assert key in r, key
    assert r["latency_s"] > 0 and r["throughput_img_s"] > 0 and r["gflops"] > 0
    model = build_model(load_config(R18, [*SMALL, "model.neck.out_channels=64"]))
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert "ratio" not in r


def test_compare_torchvision_identical(capsys) -> None:
    r = _run(capsys, ["model", "--json", "--config", TV, *SMALL, "--compare", "torchvision",
                      "--image-size", "96", "128", "--iters", "1", "--warmup", "0", "--threads", "1"])
    assert r["check"]["identical"], r["check"]
    assert r["check"]["detections"][0] > 0
    assert r["reference_latency_s"] > 0 and r["ratio"] == pytest.approx(r["latency_s"] / r["reference_latency_s"])


def test_train_compare_torchvision(capsys) -> None:
    r = _run(capsys, ["train", "--json", "--config", TV, "--compare", "torchvision", "--image-size", "128", "160",
                      "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1"])
    assert r["iter_s"] > 0 and r["reference_iter_s"] > 0
    assert r["ratio"] == pytest.approx(r["iter_s"] / r["reference_iter_s"])
    assert r["cpu_ratio"] == pytest.approx(r["cpu_s"] / r["reference_cpu_s"])
    # Same recipe: torchvision's trainable_backbone_layers=3 freezes what the config's freeze_at=2 does;
    # the one difference is torchvision's unused box regressor for the background slot (1024 x 4 + 4).
    tv = sum(p.numel() for p in build_torchvision_frcnn().parameters() if p.requires_grad)
    assert r["params_trainable"] == tv - (1024 * 4 + 4)


def test_alternating_timer_and_summary() -> None:
    calls: list[str] = []
    t = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, iters=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(t["a"]["wall"]) == 3 and len(t["b"]["cpu"]) == 3
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["iqr"] == 2.0 and s["min"] == 1.0


def test_compare_config_times_two_models(capsys) -> None:
    """--compare-config: a second config's model (shared overrides + its own) timed alongside, with
    its own params, GFLOPs and peak memory; no detection check (different models)."""
    r = _run(capsys, ["model", "--json", "--config", R18, *SMALL, "model.neck.out_channels=64",
                      "--compare-config", R18, "--compare-overrides", "model.neck.out_channels=32",
                      "--image-size", "96", "128", "--iters", "1", "--warmup", "0", "--threads", "1"])
    small = build_model(load_config(R18, [*SMALL, "model.neck.out_channels=64", "model.neck.out_channels=32"]))
    assert r["reference"] == R18 and r["reference_overrides"][-1] == "model.neck.out_channels=32"
    assert r["reference_params"] == sum(p.numel() for p in small.parameters()) < r["params"]
    assert r["reference_gflops"] > 0  # RoI-head FLOPs follow the (random) proposal count: no order
    assert r["reference_latency_s"] > 0 and r["ratio"] == pytest.approx(r["latency_s"] / r["reference_latency_s"])
    assert r["cpu_ratio"] == pytest.approx(r["cpu_s"] / r["reference_cpu_s"])
    assert "reference_peak_mem_mb" in r and "check" not in r
