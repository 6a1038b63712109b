"""COCOEvaluator over model outputs: box rescaling, label mapping, 2-process gather, inference_on_dataset."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detres.evaluation import COCOEvaluator, evaluate_results, inference_on_dataset
from detres.structures import Instances, Sample

CASE04 = "data/coco_eval_cases/04_torchmetrics_inputs_v2"


def _samples_and_outputs(case: Path, scale: float = 0.5):
    """Samples resized by ``scale`` and outputs = the case's detections in the resized pixels, xyxy."""
    gt = json.loads((case / "gt.json").read_text())
    dets = json.loads((case / "detections.json").read_text())
    cat_ids = sorted(c["id"] for c in gt["categories"])
    samples, outputs = [], []
    for i, im in enumerate(sorted(gt["images"], key=lambda x: x["id"])):
        h, w = 640 + 8 * i, 480 + 4 * i  # original sizes; the case's boxes fit inside them
        image = torch.zeros(3, round(h * scale), round(w * scale), dtype=torch.uint8)
        samples.append(Sample(image, Instances.empty(), im["id"], (h, w)))
        mine = [d for d in dets if d["image_id"] == im["id"]]
        b = torch.tensor([d["bbox"] for d in mine], dtype=torch.float64).reshape(-1, 4)
        xyxy = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        sx, sy = image.shape[2] / w, image.shape[1] / h
        outputs.append({"boxes": xyxy * torch.tensor([sx, sy, sx, sy], dtype=torch.float64),
                        "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float64),
                        "labels": torch.tensor([cat_ids.index(d["category_id"]) for d in mine], dtype=torch.int64)})
    return gt, cat_ids, samples, outputs


def test_evaluator_matches_results_file(shared_dir, tmp_path):
    case = shared_dir / CASE04
    gt, cat_ids, samples, outputs = _samples_and_outputs(case, scale=1.0)
    ev = COCOEvaluator(case / "gt.json", cat_ids, output_dir=tmp_path)
    ev.process(samples[:2], outputs[:2])
    ev.process(samples[2:], outputs[2:])
    m = ev.evaluate()
    ref = evaluate_results(case / "gt.json", case / "detections.json")
    assert m["AP"] == ref["AP"] and m["per_category"] == ref["per_category"]
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == len(json.loads((case / "detections.json").read_text()))
    assert (tmp_path / "pr_arrays.npz").is_file() and (tmp_path / "per_category.md").is_file()
    ev.reset()
    assert ev.evaluate()["AP"] == 0.0  # no predictions: 0 where GT exists


def test_evaluator_rescales_to_orig_size(shared_dir):
    case = shared_dir / CASE04
    _, cat_ids, samples, outputs = _samples_and_outputs(case, scale=0.5)
    ev = COCOEvaluator(case / "gt.json", type("Meta", (), {"cat_ids": cat_ids})())
    ev.process(samples, outputs)
    m = ev.evaluate()
    ref = evaluate_results(case / "gt.json", case / "detections.json")
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert m[k] == pytest.approx(ref[k], abs=1e-9)
    with pytest.raises(ValueError, match="label"):
        bad = dict(outputs[0], labels=torch.full_like(outputs[0]["labels"], len(cat_ids)))
        ev.process(samples[:1], [bad])


def _worker(rank: int, world: int, port: int, case: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, cat_ids, samples, outputs = _samples_and_outputs(Path(case), scale=0.5)
        ev = COCOEvaluator(Path(case) / "gt.json", cat_ids)
        ev.process(samples[rank::world], outputs[rank::world])  # disjoint shards
        m = ev.evaluate()
        if rank == 0:
            Path(out).write_text(json.dumps(m))
        else:
            assert m == {}
    finally:
        dist.destroy_process_group()


def test_two_process_gather_equals_one(shared_dir, tmp_path):
    case = shared_dir / CASE04
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "m.json"
    mp.spawn(_worker, args=(2, port, str(case), str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    _, cat_ids, samples, outputs = _samples_and_outputs(case, scale=0.5)
    ev = COCOEvaluator(case / "gt.json", cat_ids)
    ev.process(samples, outputs)
    one = ev.evaluate()
    assert two == json.loads(json.dumps(one))


class GTDetector(torch.nn.Module):
    """Deterministic 'detector' for the test: returns each image's GT boxes (jittered by a fixed pattern)
    with decreasing scores, looked up by image content (the image's first pixel encodes its index)."""

    def __init__(self, targets: list[Instances]) -> None:
        super().__init__()
        self.targets = targets
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert not self.training and torch.is_inference_mode_enabled()
        outs = []
        for img in images:
            t = self.targets[int(img[0, 0, 0])]
            n = len(t)
            jitter = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) % 3
            outs.append({"boxes": t.boxes + jitter, "scores": torch.linspace(0.9, 0.5, n) if n else torch.zeros(0),
                         "labels": t.labels})
        return outs


def test_inference_on_dataset(shared_dir):
    case = shared_dir / CASE04
    gt = json.loads((case / "gt.json").read_text())
    cat_ids = sorted(c["id"] for c in gt["categories"])
    samples, targets = [], []
    for i, im in enumerate(sorted(gt["images"], key=lambda x: x["id"])):
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        b = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        inst = Instances(torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1),
                         torch.tensor([cat_ids.index(a["category_id"]) for a in anns], dtype=torch.int64))
        image = torch.full((3, 700, 700), i, dtype=torch.uint8)
        samples.append(Sample(image, inst, im["id"], (700, 700)))
        targets.append(inst)
    model = GTDetector(targets).train()
    results = {}
    for bs in (1, 3):
        loader = [samples[i:i + bs] for i in range(0, len(samples), bs)]
        ev = COCOEvaluator(case / "gt.json", cat_ids)
        results[bs] = inference_on_dataset(model, loader, ev, progress=False)
    assert model.training  # mode restored
    assert results[1]["timing"]["images"] == len(samples)
    assert 0.5 < results[1]["AP50"] <= 1.0 and results[1]["AR100"] > 0.5
    assert {k: v for k, v in results[1].items() if k != "timing"} == \
        {k: v for k, v in results[3].items() if k != "timing"}
    assert np.isfinite(results[1]["AP"])
