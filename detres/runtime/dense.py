"""The dense part (backbone + neck) of a detector traced, frozen and optimized by TorchScript."""
from __future__ import annotations

import torch
from torch import nn


class FrozenDense(nn.Module):
    """Backbone + neck traced, frozen and ``torch.jit.optimize_for_inference``-d once per input shape
    (oneDNN prepacked weights, fused conv+ReLU/add on CPU). ``forward`` returns the neck's dict (the
    backbone's when ``neck`` is None). With autograd on it runs the eager modules.

    Shapes are cached (at most ``max_shapes``, oldest dropped): each new padded size costs a trace.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None, max_shapes: int = 8) -> None:
        super().__init__()
        self.dense = _DenseModule(backbone, neck)
        self.max_shapes = max_shapes
        self._cache: dict[tuple, torch.jit.ScriptModule] = {}
        self.size_divisibility = getattr(backbone, "size_divisibility", 0)

    def output_shape(self) -> dict:
        """The neck's ``output_shape()`` (the backbone's without a neck)."""
        d = self.dense
        return (d.neck if d.neck is not None else d.backbone).output_shape()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, 3, H, W] -> {name: [B, C, H/s, W/s]}."""
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return self.dense(x)  # traced graphs are for inference only
        key = (*x.shape, x.dtype, x.device)
        fn = self._cache.get(key)
        if fn is None:
            if len(self._cache) >= self.max_shapes:
                self._cache.pop(next(iter(self._cache)))
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(self.dense.eval(), x.clone(), strict=False, check_trace=False)
                fn = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            self._cache[key] = fn
        return fn(x)


class _DenseModule(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module | None) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats
