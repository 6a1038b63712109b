"""Samplers and loaders: disjoint shards, exact-once inference, determinism, restart by iteration."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from detres.data import (
    CocoDetection, GroupedBatchSampler, InferenceSampler, TrainingSampler, build_test_loader, build_train_loader,
    infer_num_classes,
)


def _cfg(shapes_dir: Path, workers: int = 0, batch: int = 4):
    node = lambda s: {"_target_": "CocoDetection", "ann_file": str(shapes_dir / f"annotations/instances_{s}.json"),
                      "image_root": str(shapes_dir / s)}
    return OmegaConf.create({
        "train": {"batch_size": batch, "seed": 5}, "eval": {"batch_size": 3},
        "data": {"train": node("train"), "val": node("val"), "num_workers": workers, "aspect_ratio_grouping": True,
                 "filter_empty": True, "pin_memory": False,
                 "train_transforms": [{"_target_": "ResizeShortestEdge", "short_edge": [96, 128], "max_size": 200},
                                      {"_target_": "RandomFlip"}]}})


def test_training_epoch_shards_disjoint_and_complete() -> None:
    n = 37
    s0, s1 = (TrainingSampler(n, rank=r, world_size=2, seed=1) for r in range(2))
    for epoch in range(3):
        a, b = s0.epoch_indices(epoch).tolist(), s1.epoch_indices(epoch).tolist()
        assert not set(a) & set(b) and sorted(a + b) == list(range(n))
    assert s0.epoch_indices(0).tolist() != s0.epoch_indices(1).tolist()


def test_inference_sampler_exactly_once_in_order() -> None:
    for n in (0, 1, 7, 10):
        parts = [list(InferenceSampler(n, rank=r, world_size=3)) for r in range(3)]
        assert sum(parts, []) == list(range(n))


def test_grouped_batches_same_orientation_and_restart() -> None:
    groups = [i % 3 == 0 for i in range(20)]
    bs = GroupedBatchSampler(TrainingSampler(20, seed=2), 2, groups)
    it = iter(bs)
    batches = [next(it) for _ in range(30)]
    assert all(len({groups[i] for i, _ in b}) == 1 for b in batches)
    resumed = iter(GroupedBatchSampler(TrainingSampler(20, seed=2), 2, groups, start_iter=17))
    assert [next(resumed) for _ in range(13)] == batches[17:]


def test_train_loader_two_ranks_cover_epoch(shapes_dir: Path) -> None:
    cfg = _cfg(shapes_dir)
    cfg.data.aspect_ratio_grouping = False
    ds = CocoDetection(cfg.data.train.ann_file, cfg.data.train.image_root, filter_empty=True)
    seen = []
    for rank in range(2):
        loader = build_train_loader(cfg, rank=rank, world_size=2, dataset=ds)
        assert loader.batch_size == 2
        per_rank = (len(ds) + 1 - rank) // 2
        ids = [s.image_id for _ in range(-(-per_rank // 2)) for s in next(loader)][:per_rank]
        seen += ids
    assert sorted(seen) == sorted(r["image_id"] for r in ds.records)
    assert all(len(r["boxes"]) for r in ds.records)  # empty images filtered for training


def test_train_loader_deterministic_across_workers_and_resume(shapes_dir: Path) -> None:
    cfg = _cfg(shapes_dir, workers=0)
    a = build_train_loader(cfg)
    first = [next(a) for _ in range(4)]
    assert all(len(b) == 4 for b in first) and first[0][0].instances.boxes.dtype == torch.float32
    cfg2 = _cfg(shapes_dir, workers=2)
    b = build_train_loader(cfg2, start_iter=2)
    resumed = [next(b) for _ in range(2)]
    for x, y in zip(first[2:], resumed):
        assert [s.image_id for s in x] == [s.image_id for s in y]
        for sx, sy in zip(x, y):
            assert torch.equal(sx.image, sy.image) and torch.equal(sx.instances.boxes, sy.instances.boxes)
    for batch in first:  # aspect-ratio grouping: one orientation per batch
        assert len({s.orig_size[1] >= s.orig_size[0] for s in batch}) == 1
    other = build_train_loader(cfg, seed=6)
    assert [s.image_id for s in next(other)] != [s.image_id for s in first[0]]


def test_test_loader_each_image_once(shapes_dir: Path) -> None:
    cfg = _cfg(shapes_dir)
    ids = []
    for rank in range(2):
        loader = build_test_loader(cfg, rank=rank, world_size=2)
        for batch in loader:
            assert len(batch) <= 3
            for s in batch:
                assert s.image.shape[1:] == s.orig_size  # no val transforms: original size
                ids.append(s.image_id)
    assert ids == list(range(1, 11))
    assert infer_num_classes(cfg.data) == (3, ["rectangle", "ellipse", "triangle"])
