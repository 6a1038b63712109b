"""Inference passes over a built detector: ``detres.runtime.optimize(model, backend="cpu")``.

``detres/modeling`` is the reference maths that training runs; this package rewrites an eval-mode
copy of it for speed, pass by pass (see ``PASSES``; each pass's docstring states its numerical
contract). The optimized model is for inference only: norms are folded, weights permuted or moved to
other layouts, so train and save the reference model, not this one.
"""
from __future__ import annotations

import torch
from torch import nn

from detres.runtime.passes import BACKENDS, PASSES, Pass, replace_modules

__all__ = ["optimize", "PASSES", "BACKENDS", "Pass", "replace_modules"]


def optimize(model: nn.Module, backend: str = "cpu", passes: list[str] | tuple[str, ...] | None = None) -> nn.Module:
    """Put ``model`` in eval mode without gradients and apply runtime passes in place; returns it.

    Args:
        model: a built detector (or any module) with its weights loaded.
        backend: ``"cpu"`` (default: ``BACKENDS["cpu"]``, what Predictor, demo and benchmark use) or
            ``"export"`` (only traceable passes: BN folding, for ONNX / ``torch.export``).
        passes: names from ``PASSES`` to apply instead of the backend's list (applied in ``PASSES``
            order); ``[]`` applies none.

    Passes marked ``cpu_only`` are skipped when the model's parameters are not on the CPU. The counts
    (modules rewritten per pass) are left in ``model.runtime_passes``. Detections stay within each
    pass's stated tolerance of the reference model. The result is for inference only: its
    ``state_dict`` is not the checkpoint layout (folded norms, permuted FC columns), so save the
    reference model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"detres.runtime.optimize: unknown backend {backend!r}; use one of {sorted(BACKENDS)}")
    names = list(BACKENDS[backend] if passes is None else passes)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(f"detres.runtime.optimize: unknown passes {unknown}; available: {list(PASSES)}")
    if backend == "export":
        untraceable = [n for n in names if not PASSES[n].traceable]
        if untraceable:
            raise ValueError(f"detres.runtime.optimize: passes {untraceable} do not trace; backend 'export' "
                             f"takes only {[n for n, p in PASSES.items() if p.traceable]}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    param = next(iter(model.parameters()), None)
    on_cpu = param is None or param.device.type == "cpu"
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, p in PASSES.items():
            if name in names:
                counts[name] = 0 if p.cpu_only and not on_cpu else p.fn(model)
    model.runtime_passes = counts
    return model
