"""Traceable graphs of detectors, ONNX (opset >= 17) and ``torch.export`` export, and parity checks.

What is exported is the dense, shape-static part of each detector, fed with a preprocessed batch
(``ImageBatch.tensor``: [B, 3, H, W] normalized, H and W multiples of ``size_divisibility``, no padding
inside the batch). Resizing/normalization before and the data-dependent steps after (top-k, NMS,
score thresholds) stay in Python, as in ``Detector.preprocess`` / ``postprocess``:

- DETR: outputs ``pred_logits`` [B, Q, K+1] and ``pred_boxes`` [B, Q, 4] normalized cxcywh, the whole
  network (``DETR.forward_raw`` without aux outputs); ``DETR.postprocess`` needs only these.
- Faster R-CNN: outputs the pyramid ``p2..p6`` and the RPN head's ``logits_<level>`` [B, A, H, W] and
  ``deltas_<level>`` [B, 4A, H, W]; the proposal and box stages run on them in eager code.

Batch and image size are dynamic in both (ONNX ``dynamic_axes``; ``torch.export`` dims, H and W as
multiples of 32).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn


class RawGraph(nn.Module):
    """A detector's traceable raw forward: [B, 3, H, W] normalized (unpadded) -> tuple of tensors.

    ``output_names`` names the outputs in order.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        kind = type(model).__name__
        if hasattr(model, "head") and hasattr(model.head, "in_feature"):
            self.kind = "detr"
            self.output_names = ["pred_logits", "pred_boxes"]
        elif hasattr(model, "rpn") and hasattr(model, "roi_heads"):
            self.kind = "frcnn"
            levels = list(model.rpn.in_features)
            feats = list(model.neck.output_shape()) if model.neck is not None else list(model.backbone.output_shape())
            self.feature_names = feats
            self.levels = levels
            self.output_names = feats + [f"logits_{lv}" for lv in levels] + [f"deltas_{lv}" for lv in levels]
        else:
            raise ValueError(f"export supports DETR and FasterRCNN detectors, got {kind}")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        if self.kind == "detr":
            feats = m.backbone(x)
            if m.neck is not None:
                feats = m.neck(feats)
            f = feats[m.head.in_feature]
            # Unpadded batch: the pixel mask is all False at the feature's size.
            mask = torch.zeros_like(f[:, 0], dtype=torch.bool)
            out = m.head(f, mask)
            return out["pred_logits"], out["pred_boxes"]
        feats = m.features(x)
        logits, deltas = m.rpn.head([feats[lv] for lv in self.levels])
        return tuple(feats[k] for k in self.feature_names) + tuple(logits) + tuple(deltas)


def raw_graph(model: nn.Module) -> RawGraph:
    """``RawGraph`` of an eval-mode detector (aux outputs off for DETR)."""
    model.eval()
    g = RawGraph(model).eval()
    if g.kind == "detr" and hasattr(model.head, "aux_loss"):
        model.head.aux_loss = False
    return g


def export_onnx(graph: RawGraph, example: Tensor, path: str | os.PathLike, opset: int = 17, dynamic: bool = True) -> str:
    """Write ``graph`` to ONNX (TorchScript exporter, opset >= 17); dynamic batch, height and width."""
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17 (LayerNorm, ...), got {opset}")
    axes = {"images": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    if dynamic:
        for name in graph.output_names:
            axes[name] = {0: "batch"} if graph.kind == "detr" else {0: "batch", 2: f"{name}_h", 3: f"{name}_w"}
    with torch.no_grad():
        torch.onnx.export(
            graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
            output_names=graph.output_names, dynamic_axes=axes, do_constant_folding=True,
        )
    return str(path)


def export_program(graph: RawGraph, example: Tensor, dynamic: bool = True, divisor: int = 32) -> Any:
    """``torch.export.export`` of ``graph``; dynamic batch and H, W (multiples of ``divisor``)."""
    shapes = None
    if dynamic:
        b = torch.export.Dim("batch", min=1, max=64)
        h = torch.export.Dim("h", min=1, max=128)
        w = torch.export.Dim("w", min=1, max=128)
        shapes = {"x": {0: b, 2: divisor * h, 3: divisor * w}}
        if example.shape[0] == 1:  # a size-1 dim would be specialized to a constant
            example = example.expand(2, -1, -1, -1).contiguous()
    with torch.no_grad():
        return torch.export.export(graph, (example,), dynamic_shapes=shapes, strict=False)


def _max_diffs(names: list[str], ref: tuple[Tensor, ...], got: list[Any]) -> dict[str, float]:
    return {n: float((torch.as_tensor(g).float() - r.float()).abs().max()) for n, r, g in zip(names, ref, got)}


def parity_onnx(graph: RawGraph, path: str | os.PathLike, inputs: list[Tensor]) -> dict[str, float]:
    """Max abs difference per output between onnxruntime and eager over ``inputs`` (each [B,3,H,W])."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst: dict[str, float] = {}
    for x in inputs:
        with torch.no_grad():
            ref = graph(x)
        got = sess.run(None, {"images": x.numpy()})
        for k, v in _max_diffs(graph.output_names, ref, got).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst


def parity_program(graph: RawGraph, program: Any, inputs: list[Tensor]) -> dict[str, float]:
    """Max abs difference per output between the exported program and eager over ``inputs``."""
    mod = program.module()
    worst: dict[str, float] = {}
    for x in inputs:
        with torch.no_grad():
            ref = graph(x)
            got = mod(x)
        for k, v in _max_diffs(graph.output_names, ref, list(got)).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst
