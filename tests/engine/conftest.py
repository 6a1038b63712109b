"""Engine test fixtures: a small synthetic shapes dataset (COCO format on disk) and configs for the
tiny detector that train through the real data pipeline."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 6 val synthetic shapes images (256-320 px)."""
    from detres.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, num_train=16, num_val=6, seed=0)
    return out


def tiny_config(shapes: Path, output_dir: Path, **train: object) -> dict:
    """The engine tests' config: TinyDetector on shapes resized to ~64 px, SGD, warmup + steps."""
    return {
        "num_classes": 3,
        "custom_imports": ["tests.engine.tiny_detector"],
        "model": {"_target_": "tests.engine.tiny_detector.TinyDetector", "num_classes": "${num_classes}",
                  "input": {"min_size_test": 64, "max_size_test": 96}},
        "data": {
            "train": {"_target_": "CocoDetection", "ann_file": str(shapes / "annotations/instances_train.json"),
                      "image_root": str(shapes / "train")},
            "val": {"_target_": "CocoDetection", "ann_file": str(shapes / "annotations/instances_val.json"),
                    "image_root": str(shapes / "val")},
            "train_transforms": [{"_target_": "ResizeShortestEdge", "short_edge": [56, 64], "max_size": 96},
                                 {"_target_": "RandomFlip", "prob": 0.5}],
            "val_transforms": [],
            "num_workers": 0,
        },
        "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
        "lr_scheduler": {"_target_": "detres.engine.schedule.WarmupMultiStepLR", "milestones": [5],
                         "warmup_iters": 2, "warmup_factor": 0.1},
        "train": {"output_dir": str(output_dir), "max_iter": 4, "batch_size": 4, "log_period": 1,
                  "tensorboard": False, "device": "cpu", "deterministic": True, "seed": 3, **train},
    }


@pytest.fixture
def make_cfg(shapes_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(name, overrides=[...], with_val=False, **train_keys)`` writes ``tmp/name.yaml`` and loads it
    (without ``data.val`` unless asked: evaluation on CPU is the slow part)."""
    from detres.config import load_config

    def make(name: str = "run", overrides: list[str] | None = None, with_val: bool = False, **train: object) -> DictConfig:
        path = tmp_path / f"{name}.yaml"
        cfg = tiny_config(shapes_dir, tmp_path / name, **train)
        if not with_val:
            cfg["data"]["val"] = None
        path.write_text(yaml.safe_dump(cfg))
        return load_config(path, overrides or [])

    return make


def assert_evaluation_of(results: dict, cfg: DictConfig, weights: Path) -> None:
    """``results`` (a run's COCO stats) are the evaluation of ``weights``: an independent evaluation of
    the checkpoint gives the same 12 stats, and AP is the mean of the per-category APs (every class
    of the shapes val set has ground truth)."""
    from detres.evaluation import STAT_NAMES
    from detres.evaluation.from_config import evaluate_checkpoint

    again = evaluate_checkpoint(cfg, weights, progress=False)
    assert [again[k] for k in STAT_NAMES] == [results[k] for k in STAT_NAMES]
    per_class = [r["AP"] for r in results["per_category"]]
    assert len(per_class) == 3 and min(per_class) >= 0.0
    assert abs(sum(per_class) / 3 - results["AP"]) < 1e-9
