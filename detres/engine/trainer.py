"""``Trainer``: the iteration-based training loop driven by a config.

One iteration = one optimizer step over ``train.batch_size`` images in total (all processes, all
``train.accumulate`` micro-steps). Iterations are counted from 1; ``model_{iter:07d}.pth`` holds the
state after ``iter`` steps, and a run resumed from it continues with step ``iter + 1``.

Randomness comes in two streams per rank, both saved in checkpoints: the *model* stream (the global
python/numpy/torch RNGs while the model runs: proposal sampling, dropout) and the *data* stream (the
same RNGs swapped in while the loader is built and iterated). Keeping them apart means a resumed run
draws exactly the numbers an uninterrupted one would, whatever the loader does with the global RNGs.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from detres.engine.checkpointer import Checkpointer, get_rng_state, restore_like, set_rng_state
from detres.engine.ema import ModelEMA
from detres.engine.interrupt import InterruptFlag, TrainingInterrupted
from detres.engine.logger import MetricsWriter
from detres.engine.optim import build_optimizer
from detres.engine.preflight import check_backbone_initialised, check_image_files
from detres.engine.schedule import build_lr_scheduler
from detres.engine.step import StepRunner
from detres.evaluation import run_evaluation
from detres.utils import distributed as du

logger = logging.getLogger("detres.train")

__all__ = ["Trainer", "resolve_device", "seed_all", "configure_determinism"]

EvaluateFn = Callable[[nn.Module, "Trainer"], dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda", du.get_local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", du.get_local_rank())
    return dev


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """``train.deterministic``: deterministic kernels (warning where none exists), no cuDNN autotuning."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    """Builds model, optimizer, schedule, EMA and checkpointer from ``cfg``; ``train()`` runs the loop.

    Args:
        cfg: a loaded config (``detres.load_config``).
        model: use this model instead of ``build_model(cfg)``.
        train_loader_builder: a function with ``detres.data.build_train_loader``'s signature
            (default: ``train.train_loader`` or that function).
        evaluate_fn: ``(model, trainer) -> dict of stats``, called with the EMA model when EMA is on
            (default: the COCO evaluator on ``data.val``).
    """

    def __init__(
        self, cfg: DictConfig, *, model: nn.Module | None = None,
        train_loader_builder: Callable[..., Any] | None = None, evaluate_fn: EvaluateFn | None = None,
    ) -> None:
        self.cfg = cfg
        tc: dict[str, Any] = OmegaConf.to_container(cfg.train, resolve=True)  # type: ignore[assignment]
        self.tc = tc
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.device = resolve_device(tc["device"])
        self.output_dir = Path(tc["output_dir"])
        self.accumulate = int(tc["accumulate"])
        self.micro_batch = self._micro_batch(int(tc["batch_size"]))
        configure_determinism(bool(tc["deterministic"]))
        seed_all(int(tc["seed"]))  # identical initial weights on every rank
        self._built_model = model is None  # a given model's weights are the caller's business
        if model is None:
            from detres.modeling import build_model

            model = build_model(cfg)
        if tc["init_weights"]:
            from detres.checkpoint import load_checkpoint

            logger.info("%s", load_checkpoint(model, tc["init_weights"]))
        model.to(self.device)
        if tc["channels_last"]:
            model.to(memory_format=torch.channels_last)
        if tc["sync_bn"] and self.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.train()
        self.optimizer = build_optimizer(cfg.optimizer, model, tc)
        self.scheduler = build_lr_scheduler(cfg.get("lr_scheduler", None), self.optimizer)
        self.ema = ModelEMA(model, tc["ema_decay"], tc["ema_warmup"]) if tc["ema"] else None
        self.ddp_model: nn.Module = model
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(tc["find_unused_parameters"]),
            )
        self.runner = StepRunner(
            self.ddp_model, self.optimizer, device=self.device, scheduler=self.scheduler, ema=self.ema,
            amp=tc["amp"], clip_grad=tc["clip_grad"], clip_grad_type=tc["clip_grad_type"],
        )
        self.checkpointer = Checkpointer(self.output_dir, tc["keep_last"], save_to_disk=du.is_main_process())
        self._builder = train_loader_builder
        self._evaluate_fn = evaluate_fn
        self.iter = 0
        self.data_position = 0  # micro-batches this rank's loader has yielded
        self.max_iter = int(tc["max_iter"])
        self.best: dict[str, Any] | None = None
        self.dataset_meta: dict[str, Any] | None = None
        self._loader: Iterator[Any] | None = None
        self.final_transforms_iter = self._final_transforms_iter(cfg, tc)
        self.final_transforms = False  # whether the loader now runs data.train_transforms_final
        self._resumed_rng: dict[str, Any] | None = None
        # Two RNG streams per rank (see the module docstring); the data stream is kept aside.
        seed_all(int(tc["seed"]) + 1_000_003 * (self.rank + 1))
        self._data_rng = get_rng_state()
        seed_all(int(tc["seed"]) + self.rank)

    # ----------------------------------------------------------------------------- set-up
    def _micro_batch(self, batch_size: int) -> int:
        per = self.world_size * self.accumulate
        if self.accumulate < 1 or batch_size % per:
            raise ValueError(
                f"train.batch_size={batch_size} must be a multiple of processes ({self.world_size}) x "
                f"train.accumulate ({self.accumulate}); change one of them."
            )
        return batch_size // per

    @staticmethod
    def _final_transforms_iter(cfg: DictConfig, tc: dict[str, Any]) -> int | None:
        """``train.final_transforms_iter``, checked against ``data.train_transforms_final`` (both or neither)."""
        n = tc.get("final_transforms_iter")
        final = cfg.data.get("train_transforms_final", None) if "data" in cfg and cfg.data is not None else None
        if n is None and final is not None:
            raise ValueError("data.train_transforms_final is set but train.final_transforms_iter is not: set "
                             "train.final_transforms_iter=N (the iteration after which they replace "
                             "data.train_transforms), or remove data.train_transforms_final.")
        if n is not None and final is None:
            raise ValueError(f"train.final_transforms_iter={n} needs data.train_transforms_final (the transform "
                             "list of the iterations after it, e.g. [] or just the resize); add it or remove the key.")
        if n is not None and int(n) < 0:
            raise ValueError(f"train.final_transforms_iter must be >= 0, got {n}")
        return None if n is None else int(n)

    def wants_final_transforms(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (counted from 1) trains with ``data.train_transforms_final``."""
        return self.final_transforms_iter is not None and iteration > self.final_transforms_iter

    @contextlib.contextmanager
    def _data_stream(self) -> Iterator[None]:
        model_rng = get_rng_state()
        set_rng_state(self._data_rng)
        try:
            yield
        finally:
            self._data_rng = get_rng_state()
            set_rng_state(model_rng)

    def build_train_loader(self, final: bool | None = None) -> Iterator[Any]:
        """This rank's infinite iterator of micro-batches (list[Sample]), starting at ``data_position``.

        ``final``: build it with ``data.train_transforms_final`` (default: whether the next iteration,
        ``iter + 1``, is past ``train.final_transforms_iter``). The sample order and per-sample seeds
        depend on the data position only, so switching lists changes the transforms and nothing else.
        """
        if final is None:
            final = self.wants_final_transforms(self.iter + 1)
        builder = self._builder
        if builder is None and self.tc["train_loader"]:
            from detres.registry import locate

            builder = locate(self.tc["train_loader"])
        if builder is None:
            from detres.data import build_train_loader as builder  # type: ignore[no-redef]
        loader_cfg = copy.deepcopy(self.cfg)
        loader_cfg.train.batch_size = self.micro_batch * self.world_size  # images per loader step, all ranks
        if final:
            loader_cfg.data.train_transforms = loader_cfg.data.train_transforms_final
        self.final_transforms = bool(final)
        with self._data_stream():
            loader = builder(loader_cfg, rank=self.rank, world_size=self.world_size,
                             start_iter=self.data_position, seed=int(self.tc["seed"]))
            iterator = iter(loader)
        dataset = getattr(loader, "dataset", None)
        check_image_files(dataset, str(self.cfg.data.get("on_bad_image", "raise")) if "data" in self.cfg else "raise")
        meta = getattr(loader, "meta", None) or getattr(dataset, "meta", None)
        if meta is not None:
            self.dataset_meta = meta.to_dict() if hasattr(meta, "to_dict") else dict(meta)
        if self.tc["epochs"]:
            if dataset is None or not hasattr(dataset, "__len__"):
                raise ValueError("train.epochs needs a loader with a .dataset of known length; set train.max_iter instead.")
            self.max_iter = math.ceil(float(self.tc["epochs"]) * len(dataset) / int(self.tc["batch_size"]))
        return iterator

    def _next_batch(self) -> list[Any]:
        assert self._loader is not None
        with self._data_stream():
            batch = next(self._loader)
        self.data_position += 1
        if len(batch) != self.micro_batch and self.data_position == 1:
            logger.warning("the train loader gave %d images per step on this rank, expected %d", len(batch), self.micro_batch)
        return batch

    # ----------------------------------------------------------------------------- checkpoints
    #: What ``model_final.pth`` / ``model_best.pth`` leave out: a resume needs them, inference does not.
    RESUME_ONLY = ("optimizer", "scheduler", "scaler")

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (call on every rank: it gathers the RNG states)."""
        # Tensors travel as torch.save bytes: all_gather_object's own tensor pickling breaks on some builds.
        buf = io.BytesIO()
        torch.save({"model": get_rng_state(), "data": self._data_rng}, buf)
        rng = [torch.load(io.BytesIO(b), weights_only=True) for b in du.all_gather_object(buf.getvalue())]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.runner.scaler.state_dict() if self.runner.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "iteration": self.iter,
            "data_position": self.data_position,
            "world_size": self.world_size,
            "rng": rng,
            "best": self.best,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "dataset_meta": self.dataset_meta,
        }

    def save(self, name: str, update_last: bool = True, resumable: bool = True) -> None:
        """Write a checkpoint from rank 0 (every rank must call: RNG states are gathered).

        ``resumable=False`` leaves out the optimizer, scheduler and AMP scaler (``RESUME_ONLY``): the
        final and best checkpoints, which are read for inference, are then about a third of the size.
        """
        state = self.state_dict()
        if not resumable:
            state = {k: v for k, v in state.items() if k not in self.RESUME_ONLY}
        self.checkpointer.save(name, state, update_last=update_last)
        du.barrier()

    def resume(self, path: str | os.PathLike | bool = True) -> bool:
        """Load a checkpoint to continue from (``True``: the one ``last_checkpoint`` names).

        Returns False when ``True`` was given and there is none yet (a fresh start).
        """
        if path is True:
            found = self.checkpointer.latest()
            if found is None:
                logger.info("no checkpoint in %s to resume from; starting from scratch", self.output_dir)
                return False
            path = found
        ckpt = Checkpointer.load(path)
        periodic = Path(path).parent / f"model_{int(ckpt['iteration']):07d}.pth"
        if ckpt.get("optimizer") is None and periodic.is_file():  # a lean final: its resumable twin
            path, ckpt = periodic, Checkpointer.load(periodic)
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(restore_like(self.scheduler.state_dict(), ckpt["scheduler"]))
            if self.runner.scaler is not None and ckpt.get("scaler"):
                self.runner.scaler.load_state_dict(ckpt["scaler"])
        elif int(ckpt["iteration"]) < self.max_iter:
            logger.warning(
                "%s holds the weights but no optimizer state (final and best checkpoints keep only what "
                "inference needs): training goes on with a fresh optimizer and the LR schedule moved to "
                "iteration %d, so it is not an exact continuation; for one, resume from a periodic "
                "model_XXXXXXX.pth (train.checkpoint_period).", path, int(ckpt["iteration"]))
            self._fast_forward_schedule(int(ckpt["iteration"]))
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"], ckpt.get("ema_updates", 0))
            else:
                logger.warning("%s has no EMA weights; EMA restarts from the loaded weights", path)
                self.ema = ModelEMA(self.model, self.ema.decay, self.ema.warmup)
                self.runner.ema = self.ema
        self.iter = int(ckpt["iteration"])
        self.best = ckpt.get("best")
        self.dataset_meta = ckpt.get("dataset_meta")
        rng = ckpt.get("rng") or []
        if len(rng) == self.world_size and int(ckpt.get("data_position", -1)) >= 0:
            self.data_position = int(ckpt["data_position"])
            self._resumed_rng = rng[self.rank]
        else:
            # Another process count: the RNG streams cannot carry over. The data position can: one
            # loader step is one micro-batch of the whole batch (batch_size / accumulate images over
            # all ranks) on any number of processes, and the ranks' shards interleave one epoch order.
            old = int(ckpt.get("world_size", len(rng) or 1))
            self.data_position = int(ckpt.get("data_position", 0))
            seed_all(int(self.tc["seed"]) + self.rank + self.iter)
            logger.warning("%s was written by %d processes, now %d: RNG states re-seeded", path, old, self.world_size)
        logger.info("resumed from %s at iteration %d", path, self.iter)
        return True

    def _fast_forward_schedule(self, iteration: int) -> None:
        if self.scheduler is None:
            return
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose
            warnings.simplefilter("ignore")
            for _ in range(iteration):
                self.scheduler.step()

    # ----------------------------------------------------------------------------- evaluation
    def eval_model(self) -> nn.Module:
        """The model evaluation uses: the EMA weights when ``train.ema`` is on, else the raw model."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """Evaluate ``eval_model()`` (RNG-neutral), log the stats, keep ``model_best.pth``."""
        model = self.eval_model()
        rng = get_rng_state()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                fn = self._evaluate_fn or (lambda m, t: run_evaluation(t.cfg, m))
                results = fn(model, self) or {}
        finally:
            model.train(was_training)
            set_rng_state(rng)
        results = du.all_gather_object(results)[0]  # rank 0's stats decide everywhere
        if not results:
            return results
        if du.is_main_process():
            name = "eval_final.json" if final else f"eval_{self.iter:07d}.json"
            (self.output_dir / name).write_text(json.dumps({"iter": self.iter, **results}, indent=1, default=float))
            if self._writer is not None:
                self._writer.write_eval(self.iter, results)
        metric = self.tc["best_metric"]
        value = results.get(metric) if metric else None
        if isinstance(value, (int, float)):
            sign = 1.0 if self.tc["best_mode"] == "max" else -1.0
            if self.best is None or sign * value > sign * self.best["value"]:
                self.best = {"metric": metric, "value": float(value), "iteration": self.iter}
                self.save("model_best.pth", update_last=False, resumable=False)
        return results

    # ----------------------------------------------------------------------------- the loop
    _writer: MetricsWriter | None = None

    def train(self) -> dict[str, Any]:
        """Run iterations ``iter + 1 .. max_iter``, then save ``model_final.pth`` and evaluate.

        Returns the final evaluation stats (empty when there is no evaluator or validation set, or when
        the run was already finished). Ctrl-C saves the last finished iteration as a resumable
        checkpoint and raises ``TrainingInterrupted`` (a KeyboardInterrupt).
        """
        tc = self.tc
        if self.iter == 0 and not tc["init_weights"] and self._built_model:
            check_backbone_initialised(self.cfg, self.model)
        self._loader = self.build_train_loader()
        if self.iter >= self.max_iter and (self.output_dir / "model_final.pth").is_file():
            logger.info("this run is finished: iteration %d of train.max_iter=%d is in %s; nothing to do (raise "
                        "train.max_iter to train further)", self.iter, self.max_iter, self.output_dir / "model_final.pth")
            return {}
        if du.is_main_process():
            from detres.config import save_config

            save_config(self.cfg, self.output_dir / "config.yaml")
            self._writer = MetricsWriter(self.output_dir, self.max_iter, self.iter, tc["tensorboard"], tc["progress_bar"])
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng["model"])
            self._data_rng = self._resumed_rng["data"]
            self._resumed_rng = None
        logger.info("training iterations %d..%d, %d images per step on %d process(es) x %d accumulation step(s)",
                    self.iter + 1, self.max_iter, tc["batch_size"], self.world_size, self.accumulate)
        start_iter = self.iter
        flag = InterruptFlag()
        try:
            with flag.installed():
                self._loop(flag)
            if self.iter > start_iter or not (self.output_dir / "model_final.pth").is_file():
                self.save("model_final.pth", resumable=False)
            results = self.evaluate(final=True)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return results

    def _stop_requested(self, flag: InterruptFlag) -> bool:
        if self.world_size == 1:
            return flag.requested
        return any(du.all_gather_object(flag.requested))  # every rank must stop (and save) together

    def _loop(self, flag: InterruptFlag) -> None:
        tc = self.tc
        eval_period, ckpt_period, log_period = int(tc["eval_period"]), int(tc["checkpoint_period"]), int(tc["log_period"])
        while self.iter < self.max_iter:
            if self._stop_requested(flag):
                self._interrupted()
            it = self.iter + 1
            t0 = time.perf_counter()
            position = self.data_position
            if not self.final_transforms and self.wants_final_transforms(it):
                self._switch_to_final_transforms()
            try:
                batches = [self._next_batch() for _ in range(self.accumulate)]
            except Exception:
                if not flag.requested:
                    raise
                # Ctrl-C reached the loader's workers too: nothing of this step has run yet.
                self.data_position = position
                self._interrupted()
            t_data = time.perf_counter() - t0
            lr = max(g["lr"] for g in self.optimizer.param_groups)
            stats = self.runner(batches, it)
            self.iter = it
            if self._writer is not None:
                self._writer.put(**stats, time=time.perf_counter() - t0, data_time=t_data)
                if it % max(1, log_period) == 0 or it == self.max_iter:
                    self._writer.write(it, lr, self.device)
                self._writer.advance()
            if eval_period > 0 and it % eval_period == 0 and it < self.max_iter:
                self.evaluate()
            if ckpt_period > 0 and it % ckpt_period == 0:  # the last one too: a finished run can be extended exactly
                self.save(f"model_{it:07d}.pth")

    def _switch_to_final_transforms(self) -> None:
        """Rebuild the loader with ``data.train_transforms_final`` at the current data position (every
        rank at the same iteration; the old loader's workers shut down with it)."""
        logger.info("iteration %d onwards: training with data.train_transforms_final (train.final_transforms_iter=%d)",
                    self.iter + 1, self.final_transforms_iter)
        self._loader = None
        self._loader = self.build_train_loader(final=True)

    def _interrupted(self) -> None:
        """Save the last finished iteration (resumable) and raise ``TrainingInterrupted``."""
        name = f"model_{self.iter:07d}.pth"
        self.save(name)
        path = str(self.output_dir / name) if du.is_main_process() else None
        err = TrainingInterrupted(self.iter, path)
        logger.warning("%s (saved %s)", err.args[0], self.output_dir / name)
        raise err
