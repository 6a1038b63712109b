"""Exponential moving average of a model's weights (Polyak averaging; the ramped decay of
YOLOv5 / RT-DETR, so that early averages are not dominated by the random initialization)."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class ModelEMA:
    """EMA of a model's floating-point parameters and buffers.

    ``decay_t = decay * (1 - exp(-t / warmup))`` after ``t`` updates (``warmup`` 0: constant ``decay``).
    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied.

    Args:
        model: the model to average (a DDP wrapper is unwrapped).
        decay: the decay once warmed up, e.g. 0.9998.
        warmup: updates over which the decay ramps up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: int = 2000) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.updates = float(decay), int(warmup), 0

    def current_decay(self) -> float:
        """The decay the next update will use."""
        t = self.updates + 1
        if self.warmup <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-t / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * model, for every floating-point tensor of the state dict."""
        d = self.current_decay()
        self.updates += 1
        src = unwrap(model).state_dict()
        for name, v in self.module.state_dict().items():
            s = src[name].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(s.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (a plain model state dict)."""
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, Any], updates: int) -> None:
        """Restore averaged weights and the update count (for exact resume)."""
        self.module.load_state_dict(sd)
        self.updates = int(updates)
