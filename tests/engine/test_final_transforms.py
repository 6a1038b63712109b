"""``train.final_transforms_iter`` + ``data.train_transforms_final``: the augmentation-free tail
(RT-DETR's ``stop_epoch``): the transform list switches after N iterations, and a resumed run past N
uses the final list from its first step, drawing the same batches as an uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detres.config.validate import ConfigError
from detres.data import build_train_loader
from detres.engine import Trainer

# Distinct output sizes tell the lists apart: 64x64 while augmenting, 48x80 in the tail.
OVERRIDES = [
    "data.train_transforms=[{_target_: RandomFlip, prob: 0.5}, {_target_: Resize, size: [64, 64]}]",
    "data.train_transforms_final=[{_target_: Resize, size: [48, 80]}]",
    "train.final_transforms_iter=3",
]
MAIN, FINAL = (64, 64), (48, 80)


class _Recorder:
    """Wraps a train loader; records the image size of every batch it yields."""

    def __init__(self, loader: Any, log: list[tuple[int, int]]) -> None:
        self.loader, self.log, self.dataset = loader, log, loader.dataset

    def __iter__(self) -> "_Recorder":
        return self

    def __next__(self) -> Any:
        batch = next(self.loader)
        sizes = {tuple(s.image.shape[-2:]) for s in batch}
        assert len(sizes) == 1, sizes
        self.log.append(sizes.pop())
        return batch


def _recording(log: list[tuple[int, int]], built: list[Any]) -> Any:
    def build(cfg: Any, **kw: Any) -> _Recorder:
        built.append((kw["start_iter"], [t["_target_"] for t in cfg.data.train_transforms]))
        return _Recorder(build_train_loader(cfg, **kw), log)
    return build


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in recs if "loss" in r}


def test_switch_after_n_and_resume_past_n(make_cfg):
    log: list[tuple[int, int]] = []
    built: list[Any] = []
    straight = make_cfg("straight", OVERRIDES, max_iter=5, checkpoint_period=2)
    t = Trainer(straight, train_loader_builder=_recording(log, built))
    assert t.final_transforms_iter == 3 and not t.wants_final_transforms(3) and t.wants_final_transforms(4)
    t.train()
    assert log == [MAIN] * 3 + [FINAL] * 2 and t.final_transforms
    # rebuilt once, at the data position of iteration 4, with the final list
    assert built == [(0, ["RandomFlip", "Resize"]), (3, ["Resize"])]
    for ckpt, expect in (("model_0000004.pth", [FINAL]), ("model_0000002.pth", [MAIN, FINAL, FINAL])):
        log, built = [], []
        resumed = make_cfg(f"resumed_{ckpt[6:13]}", OVERRIDES, max_iter=5)
        t = Trainer(resumed, train_loader_builder=_recording(log, built))
        assert t.resume(Path(straight.train.output_dir) / ckpt)
        t.train()
        assert log == expect, ckpt
        assert built[0] == ((4, ["Resize"]) if ckpt == "model_0000004.pth" else (2, ["RandomFlip", "Resize"]))
        a, b = _losses(Path(straight.train.output_dir)), _losses(Path(resumed.train.output_dir))
        assert sorted(b) == list(range(int(ckpt[6:13]) + 1, 6))
        for it in b:  # the same images with the same transforms as the uninterrupted run
            assert a[it] == b[it], f"{ckpt}: iteration {it}: {a[it]} vs {b[it]}"


def test_keys_checked_before_training(make_cfg):
    with pytest.raises(ValueError, match="needs data.train_transforms_final"):
        Trainer(make_cfg("no_list", ["train.final_transforms_iter=2"]))
    with pytest.raises(ValueError, match="train.final_transforms_iter is not"):
        Trainer(make_cfg("no_iter", ["data.train_transforms_final=[]"]))
    with pytest.raises(ConfigError, match="train_transforms_final"):
        make_cfg("typo", ["data.train_transform_final=[]"])
