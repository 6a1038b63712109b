"""One optimizer step: forward/backward over accumulation micro-batches under autocast, gradient
scaling (fp16), clipping, the NaN/inf guard, the optimizer and scheduler steps and the EMA update."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from detres.utils import distributed as du
from detres.engine.ema import ModelEMA, unwrap
from detres.structures import Sample

__all__ = ["NonFiniteLossError", "StepRunner", "batch_to_inputs"]

AMP_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """A loss or the gradient norm became NaN/inf; the message names the iteration, terms and image ids."""


def batch_to_inputs(batch: Sequence[Sample], device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """list[Sample] -> (images [3,H,W] uint8 on ``device``, targets {"boxes" xyxy abs, "labels", "iscrowd"})."""
    images = [s.image.to(device, non_blocking=True) for s in batch]
    targets = [{k: v.to(device, non_blocking=True) for k, v in s.instances.to_target().items()} for s in batch]
    return images, targets


class StepRunner:
    """Runs optimizer steps for a (possibly DDP-wrapped) model.

    Args:
        model: the model called as ``model(images, targets) -> dict[str, Tensor]`` of losses.
        optimizer / scheduler / ema: stepped once per call (scheduler and ema may be None).
        device: where the inputs go.
        amp: None, ``fp16`` or ``bf16``.
        clip_grad / clip_grad_type: max gradient ``norm`` or ``value`` (None = no clipping).
    """

    def __init__(
        self, model: nn.Module, optimizer: Optimizer, *, device: torch.device, scheduler: Any = None,
        ema: ModelEMA | None = None, amp: str | None = None, clip_grad: float | None = None,
        clip_grad_type: str = "norm",
    ) -> None:
        if amp not in AMP_DTYPES:
            raise ValueError(f"train.amp must be null, fp16 or bf16, got {amp!r}")
        if clip_grad_type not in ("norm", "value"):
            raise ValueError(f"train.clip_grad_type must be 'norm' or 'value', got {clip_grad_type!r}")
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.device, self.amp = device, amp
        self.clip_grad, self.clip_grad_type = clip_grad, clip_grad_type
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp])

    def _check_finite(self, it: int, names: list[str], values: Tensor, batch: Sequence[Sample]) -> None:
        is_loss = torch.tensor([n.startswith("loss") for n in names], device=values.device)
        if bool((torch.isfinite(values) | ~is_loss).all()):
            return
        ids = du.all_gather_object([int(s.image_id) for s in batch])
        terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values.tolist()))
        where = f"rank image ids {ids}" if len(ids) > 1 else f"image ids {ids[0]}"
        raise NonFiniteLossError(
            f"iteration {it}: non-finite loss ({terms}); batch {where}. Training stopped. Lower the LR, "
            "lengthen the warmup, set train.clip_grad, or check these images' boxes with tools/check_dataset.py."
        )

    def __call__(self, batches: Sequence[Sequence[Sample]], it: int) -> dict[str, float]:
        """One optimizer step over ``batches`` (one per accumulation micro-step; this rank's images).

        Returns the loss terms and ``loss`` (their sum), averaged over micro-steps and ranks, plus
        ``grad_norm`` when clipping by norm. ``it`` (1-based) names the step in errors.
        Raises NonFiniteLossError on a NaN/inf loss.
        """
        model, n = self.model, len(batches)
        self.optimizer.zero_grad(set_to_none=True)
        sums: Tensor | None = None
        names: list[str] = []
        for k, batch in enumerate(batches):
            images, targets = batch_to_inputs(batch, self.device)
            sync = contextlib.nullcontext()
            if k < n - 1 and isinstance(model, nn.parallel.DistributedDataParallel):
                sync = model.no_sync()  # all-reduce gradients once, on the last micro-step
            with sync:
                with self._autocast():
                    loss_dict = model(images, targets)
                if not isinstance(loss_dict, dict) or not loss_dict:
                    raise TypeError(
                        f"{type(unwrap(model)).__name__} in train mode must return a dict of named losses, "
                        f"got {type(loss_dict).__name__}"
                    )
                names = sorted(loss_dict)
                terms = [loss_dict[k2].float() for k2 in names if k2.startswith("loss")]
                total = torch.stack(terms).sum() if terms else None
                if total is None:
                    raise TypeError(f"the model returned no 'loss_*' entry: {names}")
                values = torch.stack([loss_dict[k2].detach().float().reshape(()) for k2 in names])
                values = du.all_reduce_mean(values)
                self._check_finite(it, names, values, batch)
                sums = values if sums is None else sums + values
                loss = total / n
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        out = {k2: float(v) for k2, v in zip(names, (sums / n).tolist())}
        out["loss"] = sum(v for k2, v in out.items() if k2.startswith("loss_"))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad is not None and self.clip_grad > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if self.clip_grad_type == "norm":
                norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad))
                out["grad_norm"] = norm
                if not math.isfinite(norm) and self.scaler is None:
                    raise NonFiniteLossError(
                        f"iteration {it}: non-finite gradient norm ({norm}) with finite losses "
                        f"({', '.join(f'{k2}={v:.4g}' for k2, v in out.items() if k2.startswith('loss_'))}). "
                        "Training stopped. Lower the LR or use train.amp=bf16 / null."
                    )
            else:
                torch.nn.utils.clip_grad_value_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return out

