"""``detres eval --config C --weights W``: Faster R-CNN (random weights) on a tiny synthetic shapes set."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from detres.cli.eval import main
from detres.evaluation import STAT_NAMES


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detres.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes_eval")
    make_shapes(out, num_train=2, num_val=4, seed=1)
    return out


@pytest.mark.slow
def test_eval_model_mode_batch_invariant(shapes, repo_root, tmp_path):
    import detres

    cfg_path = str(repo_root / "configs/examples/shapes_faster_rcnn.yaml")
    over = [f"data.train.ann_file={shapes}/annotations/instances_train.json", f"data.train.image_root={shapes}/train",
            f"data.val.ann_file={shapes}/annotations/instances_val.json", f"data.val.image_root={shapes}/val",
            "data.num_workers=0", "model.input.min_size_test=128", "model.input.max_size_test=160",
            "model.roi_heads.score_thresh=0.0"]
    torch.manual_seed(0)
    cfg = detres.load_config(cfg_path, over)
    model = detres.build_model(cfg)
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    metrics = {}
    for bs in (1, 4):
        out = tmp_path / f"m{bs}.json"
        with contextlib.redirect_stdout(io.StringIO()) as buf:
            assert main(["--config", cfg_path, "--weights", str(weights), "--output", str(out), "--batch-size",
                         str(bs), "--output-dir", str(tmp_path / f"o{bs}"), "--no-progress", *over]) == 0
        assert "Average Precision" in buf.getvalue()
        metrics[bs] = json.loads(out.read_text())
        assert sorted(metrics[bs]) == sorted([*STAT_NAMES, "per_category"])
        assert all(-1.0 <= metrics[bs][k] <= 1.0 for k in STAT_NAMES)
        assert len(metrics[bs]["per_category"]) == 3
    res = json.loads((tmp_path / "o1/coco_instances_results.json").read_text())
    assert res and {"image_id", "category_id", "bbox", "score"} <= set(res[0])
    # the eval batch size does not move the stats
    assert metrics[1] == metrics[4]
