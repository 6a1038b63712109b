"""Build datasets and loaders from a config: ``build_train_loader``, ``build_test_loader``, ``infer_num_classes``."""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import BatchSampler, DataLoader

from detres.config.loader import infer_num_classes  # noqa: F401  (re-exported: detres.data's name for it)
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler
from detres.data.transforms import Compose
from detres.registry import config_builder, instantiate, locate
from detres.structures import Sample

logger = logging.getLogger("detres.data")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig,)) or OmegaConf.is_list(node) else node


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    v = cfg.get(key, default) if isinstance(cfg, (Mapping, DictConfig)) else getattr(cfg, key, default)
    return default if v is None else v


def build_transforms(node: Any) -> Compose | None:
    """A Compose of a list of transform nodes (None / empty list: no transforms)."""
    node = _plain(node)
    if not node:
        return None
    built = instantiate(node)
    return built if isinstance(built, Compose) else Compose(built if isinstance(built, list) else [built])


def build_dataset(node: Any, transforms_node: Any = None, is_train: bool = True, *, filter_empty: bool = True,
                  on_bad_image: str | None = None) -> Any:
    """Build a dataset node (``{_target_: CocoDetection, ...}``) with its transforms injected.

    A node that leaves ``filter_empty`` unset gets ``is_train and filter_empty``: images without
    boxes are dropped for training only. ``on_bad_image`` is passed when the node leaves it unset.
    """
    node = dict(_plain(node) or {})
    if "_target_" not in node:
        raise ValueError("dataset node needs a _target_ (e.g. CocoDetection with ann_file and image_root).")
    target = locate(node["_target_"])
    params = inspect.signature(target).parameters
    injected: dict[str, Any] = {"transforms": build_transforms(transforms_node)}
    if "filter_empty" in params and node.get("filter_empty") is None:
        injected["filter_empty"] = bool(is_train and filter_empty)
    if "on_bad_image" in params and on_bad_image is not None and "on_bad_image" not in node:
        injected["on_bad_image"] = on_bad_image
    node = {k: v for k, v in node.items() if k not in injected or k == "filter_empty" and v is not None}
    return instantiate(node, **injected)


class _Batch:
    """A list of Samples that DataLoader's pin-memory thread can pin (it calls ``pin_memory()``)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def pin_memory(self) -> "_Batch":
        for s in self.samples:
            s.image = s.image.pin_memory()
            s.instances = type(s.instances)(s.instances.boxes.pin_memory(), s.instances.labels.pin_memory(),
                                            s.instances.iscrowd.pin_memory())
        return self


def _collate(samples: list[Sample]) -> _Batch:
    return _Batch(list(samples))


def _worker_init(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _data_loader(dataset: Any, batch_sampler: Any, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=_collate, num_workers=num_workers,
                      pin_memory=pin_memory and torch.cuda.is_available(), worker_init_fn=_worker_init,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)


class TrainLoader:
    """Infinite iterator of ``list[Sample]`` batches for one rank; ``.dataset``, ``.batch_size``."""

    def __init__(self, dataset: Any, loader: DataLoader, batch_size: int) -> None:
        self.dataset, self.batch_size, self._loader = dataset, batch_size, loader
        self._it: Iterator[_Batch] | None = None

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> list[Sample]:
        if self._it is None:
            self._it = iter(self._loader)
        return next(self._it).samples


class TestLoader:
    """Finite iterable of ``list[Sample]`` batches in dataset order; ``len`` = number of batches."""

    def __init__(self, dataset: Any, loader: DataLoader) -> None:
        self.dataset, self._loader = dataset, loader

    def __iter__(self) -> Iterator[list[Sample]]:
        for b in self._loader:
            yield b.samples

    def __len__(self) -> int:
        return len(self._loader)


@config_builder
def build_train_loader(cfg: Any, *, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                       seed: int | None = None, dataset: Any = None) -> TrainLoader:
    """Infinite training batches (``list[Sample]``) of ``cfg.train.batch_size // world_size`` images.

    Each rank reads a disjoint shard of every epoch; batches are aspect-ratio grouped when
    ``cfg.data.aspect_ratio_grouping``; batch ``start_iter`` onwards is exactly what an
    uninterrupted run would have produced (same seed, rank, world size), whatever num_workers.
    """
    data = cfg.data
    total = int(cfg.train.batch_size)
    if total % world_size:
        raise ValueError(f"train.batch_size={total} is not divisible by the world size {world_size}.")
    if dataset is None:
        dataset = build_dataset(data.train, data.get("train_transforms"), True,
                                filter_empty=bool(_cfg_get(data, "filter_empty", True)),
                                on_bad_image=_cfg_get(data, "on_bad_image", None))
    seed = int(cfg.train.seed if seed is None else seed)
    sampler = TrainingSampler(len(dataset), rank=rank, world_size=world_size, seed=seed)
    group_ids = None
    if _cfg_get(data, "aspect_ratio_grouping", True) and hasattr(dataset, "aspect_ratios"):
        group_ids = (dataset.aspect_ratios() < 1).astype("int64")
    bs = GroupedBatchSampler(sampler, total // world_size, group_ids, start_iter)
    loader = _data_loader(dataset, bs, int(_cfg_get(data, "num_workers", 0)), bool(_cfg_get(data, "pin_memory", False)))
    return TrainLoader(dataset, loader, total // world_size)


def build_test_loader(cfg: Any, *, batch_size: int | None = None, rank: int = 0, world_size: int = 1,
                      dataset: Any = None) -> TestLoader:
    """Batches over ``cfg.data.val`` in order, each image exactly once across ranks (rank r: one
    contiguous chunk); no images are filtered. ``batch_size`` defaults to ``cfg.eval.batch_size``."""
    data = cfg.data
    if dataset is None:
        dataset = build_dataset(data.val, data.get("val_transforms"), False,
                                on_bad_image=_cfg_get(data, "on_bad_image", None))
    if batch_size is None:
        batch_size = int(_cfg_get(cfg.get("eval", {}) or {}, "batch_size", 1))
    sampler = BatchSampler(InferenceSampler(len(dataset), rank=rank, world_size=world_size), batch_size, False)
    workers = int(_cfg_get(data, "num_workers", 0))
    loader = _data_loader(dataset, sampler, min(workers, max(1, math.ceil(len(sampler) / 2))) if workers else 0,
                          bool(_cfg_get(data, "pin_memory", False)))
    return TestLoader(dataset, loader)


__all__ = ["build_dataset", "build_transforms", "build_train_loader", "build_test_loader", "infer_num_classes",
           "TrainLoader", "TestLoader"]
