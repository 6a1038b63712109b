"""Per-iteration learning-rate schedules with linear warmup (Goyal et al. 2017, "Accurate, Large
Minibatch SGD"): multi-step decay (Faster R-CNN's 1x/3x) and cosine decay (Loshchilov & Hutter 2017).

Both are ``torch.optim.lr_scheduler.LRScheduler`` subclasses stepped once per optimizer step; their
LR at step ``t`` is a closed form of ``t``, so a resumed schedule is exactly the uninterrupted one.
Config nodes: ``lr_scheduler: {_target_: detres.engine.schedule.WarmupMultiStepLR, milestones: [..]}``;
``optimizer`` is injected by the trainer.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupMultiStepLR", "WarmupCosineLR", "warmup_factor_at", "build_lr_scheduler"]


def warmup_factor_at(it: int, warmup_iters: int, warmup_factor: float, method: str = "linear") -> float:
    """LR factor at step ``it`` of a warmup: ``linear`` ramps warmup_factor -> 1, ``constant`` holds it."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"unknown warmup method '{method}'; use 'linear' or 'constant'")


class WarmupMultiStepLR(LRScheduler):
    """LR = base_lr * warmup(t) * gamma ** (number of milestones <= t).

    Args:
        optimizer: the optimizer (injected).
        milestones: increasing optimizer-step indices where the LR is multiplied by ``gamma``.
        gamma: decay factor at each milestone.
        warmup_iters: steps of warmup (0 = none).
        warmup_factor: LR factor at step 0 of the warmup.
        warmup_method: ``linear`` or ``constant``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"lr_scheduler.milestones must be increasing, got {milestones}")
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        warmup_factor_at(0, 1, self.warmup_factor, warmup_method)  # validate the method name early
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The LR of every param group at step ``self.last_epoch``."""
        t = self.last_epoch
        f = warmup_factor_at(t, self.warmup_iters, self.warmup_factor, self.warmup_method)
        decay = self.gamma ** bisect_right(self.milestones, t)
        return [base * f * decay for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupCosineLR(LRScheduler):
    """LR = base_lr * warmup(t) * (min_lr_factor + (1 - min_lr_factor) * (1 + cos(pi t / max_iters)) / 2).

    Args:
        optimizer: the optimizer (injected).
        max_iters: steps over which the cosine goes from 1 down to ``min_lr_factor``.
        warmup_iters / warmup_factor / warmup_method: as in WarmupMultiStepLR.
        min_lr_factor: final LR as a fraction of the base LR.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_iters: int,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        min_lr_factor: float = 0.0,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"lr_scheduler.max_iters must be positive, got {max_iters}")
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.min_lr_factor = float(min_lr_factor)
        self.warmup_method = warmup_method
        warmup_factor_at(0, 1, self.warmup_factor, warmup_method)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The LR of every param group at step ``self.last_epoch``."""
        t = min(self.last_epoch, self.max_iters)
        f = warmup_factor_at(self.last_epoch, self.warmup_iters, self.warmup_factor, self.warmup_method)
        cos = 0.5 * (1.0 + math.cos(math.pi * t / self.max_iters))
        g = self.min_lr_factor + (1.0 - self.min_lr_factor) * cos
        return [base * f * g for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def build_lr_scheduler(node: Mapping[str, Any] | None, optimizer: Optimizer) -> LRScheduler | None:
    """Build an ``lr_scheduler:`` config node (``_target_`` + arguments) with ``optimizer`` injected.

    None or an empty node gives no scheduler (constant LR). Any torch scheduler works by dotted path;
    it is stepped once per optimizer step, so its step counts are optimizer steps.
    """
    from detres.registry import instantiate

    if not node:
        return None
    if "_target_" not in node:
        raise ValueError(
            "lr_scheduler: missing _target_; use e.g. detres.engine.schedule.WarmupMultiStepLR or a torch "
            "scheduler's dotted path (torch.optim.lr_scheduler.StepLR)."
        )
    return instantiate(node, optimizer=optimizer)
