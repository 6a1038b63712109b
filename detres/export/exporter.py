"""Traceable graphs of detectors, ONNX (opset >= 17) and ``torch.export`` export, and parity checks.

What is exported is the dense, shape-static part of each detector, fed with a preprocessed batch
(``ImageBatch.tensor``: [B, 3, H, W] normalized, H and W multiples of ``size_divisibility``, no padding
inside the batch). Resizing/normalization before and the data-dependent steps after (top-k, NMS,
score thresholds) stay in Python, as in ``Detector.preprocess`` / ``postprocess``:

- DETR: outputs ``pred_logits`` [B, Q, K+1] and ``pred_boxes`` [B, Q, 4] normalized cxcywh, the whole
  network (``DETR.forward_raw`` without aux outputs); ``DETR.postprocess`` needs only these.
- Faster R-CNN, in two graphs. ``RawGraph``: the pyramid ``p2..p6`` and the RPN head's
  ``logits_<level>`` [B, A, H, W] and ``deltas_<level>`` [B, 4A, H, W]. ``BoxGraph``: the second
  stage on the pooled levels and RoIs [R, 5] (batch index, xyxy input pixels) -> ``scores`` [R, K]
  (softmax without background) and ``boxes`` [R, K, 4] (decoded per class, not clipped). Proposal
  selection between them and the score threshold / NMS after them stay in eager code.

Batch and image size are dynamic in both (ONNX ``dynamic_axes``; ``torch.export`` dims, H and W as
multiples of 32).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


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


class BoxGraph(nn.Module):
    """Faster R-CNN's box stage as a static graph: (level features..., rois [R, 5]) -> scores, boxes.

    The eager pooler gathers each level's RoIs with ``nonzero`` (a data-dependent shape); here every
    RoI is pooled from every level and a one-hot sum over levels keeps its own one, which gives the
    same numbers with shapes that depend only on R (at L times the RoIAlign work).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "rpn") and hasattr(model, "roi_heads")):
            raise ValueError(f"BoxGraph needs a Faster R-CNN detector, got {type(model).__name__}")
        self.roi_heads = model.roi_heads
        self.in_features = list(model.roi_heads.in_features)
        self.input_names = self.in_features + ["rois"]
        self.output_names = ["scores", "boxes"]

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *feats, rois = args
        heads = self.roi_heads
        pooler = heads.pooler
        r = pooler.output_size
        pooled = torch.stack([
            roi_align(f, rois, r, scale, pooler.sampling_ratio, pooler.aligned)
            for f, scale in zip(feats, pooler.scales)
        ])
        if len(feats) > 1:
            lv = pooler.levels(rois)
            levels = torch.arange(len(feats), device=rois.device)
            onehot = (lv[None, :] == levels[:, None]).to(pooled.dtype)
            x = (pooled * onehot[:, :, None, None, None]).sum(0)
        else:
            x = pooled[0]
        logits, deltas = heads.box_predictor(heads.box_head(x))
        return heads.scores_and_boxes(logits, deltas, rois[:, 1:])

    def reference(self, feats: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """The same outputs through the model's own eager code (``StandardROIHeads.forward``); the
        reference pooler uses torchvision's RoIAlign kernel like the exported graph."""
        heads = self.roi_heads
        n_img = feats[0].shape[0]
        proposals = [rois[rois[:, 0] == i, 1:] for i in range(n_img)]
        order = torch.cat([torch.nonzero(rois[:, 0] == i, as_tuple=True)[0] for i in range(n_img)])
        logits, deltas = heads(dict(zip(self.in_features, feats)), proposals)
        scores, boxes = heads.scores_and_boxes(logits, deltas, rois[order, 1:])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return scores[inverse], boxes[inverse]


def box_stage_inputs(graph: RawGraph, x: Tensor, num_rois: int = 64, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs of ``BoxGraph`` for a preprocessed batch ``x``: its pooled level features (eager) and
    ``num_rois`` random RoIs spread over the images, from a few pixels to the whole image."""
    with torch.no_grad():
        feats = graph.model.features(x)
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    size = torch.exp(torch.empty(num_rois).uniform_(2.0, float(torch.tensor(min(h, w)).log()), generator=g))
    aspect = torch.exp(torch.empty(num_rois).uniform_(-0.7, 0.7, generator=g))
    bw, bh = size * aspect.sqrt(), size / aspect.sqrt()
    x0 = torch.rand(num_rois, generator=g) * (w - bw).clamp(min=1)
    y0 = torch.rand(num_rois, generator=g) * (h - bh).clamp(min=1)
    idx = torch.arange(num_rois) % b
    rois = torch.stack([idx.float(), x0, y0, x0 + bw, y0 + bh], dim=1)
    return (*[feats[f] for f in graph.model.roi_heads.in_features], rois)


def onnx_runner(path: str | os.PathLike, input_names: list[str]) -> Any:
    """A callable running an ONNX file on onnxruntime (CPU): tensors in, list of tensors out."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda *a: [torch.from_numpy(o) for o in sess.run(None, {n: t.numpy() for n, t in zip(input_names, a)})]


def program_runner(program: Any) -> Any:
    """A callable running a ``torch.export`` program: tensors in, list of tensors out."""
    mod = program.module()
    return lambda *a: list(mod(*a))


class ExportedFasterRCNN:
    """Faster R-CNN inference on its two exported graphs, with the model's eager code between them.

    ``dense`` runs ``RawGraph`` (images -> pyramid, RPN logits and deltas) and ``box`` runs
    ``BoxGraph`` (pooled levels, RoIs -> scores, boxes), each as ``onnx_runner`` / ``program_runner``
    or any callable of that form. Preprocessing, anchors, proposal selection, score threshold, NMS and
    rescaling are the model's own, so the result is comparable detection for detection with
    ``model(images)`` (exactly so for a model optimized with ``backend="export"`` or not at all).
    """

    def __init__(self, model: nn.Module, dense: Any, box: Any) -> None:
        self.model, self.dense, self.box = model.eval(), dense, box
        self.graph = RawGraph(model)

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """images: list of [3, H, W] RGB 0..255 -> per image {"boxes", "scores", "labels"} in its pixels,
        batched by padded size as ``model.inference`` does."""
        results: list[dict[str, Tensor]] = [{}] * len(images)
        for idx in self.model.padding_groups(images):
            for i, det in zip(idx, self._run([images[i] for i in idx])):
                results[i] = det
        return results

    def _run(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        m, g = self.model, self.graph
        batch = m.preprocess(images, resize=True)
        outs = dict(zip(g.output_names, self.dense(batch.tensor)))
        feats = {k: outs[k] for k in g.feature_names}
        logits = [outs[f"logits_{lv}"] for lv in g.levels]
        deltas = [outs[f"deltas_{lv}"] for lv in g.levels]
        anchors = m.rpn.anchor_generator([tuple(x.shape[-2:]) for x in logits], tuple(batch.tensor.shape[-2:]))
        props = [p[0] for p in m.rpn.proposals({"logits": logits, "deltas": deltas, "anchors": anchors}, batch.image_sizes)]
        rois = torch.cat([torch.cat([p.new_full((len(p), 1), float(i)), p], dim=1) for i, p in enumerate(props)])
        scores, boxes = self.box(*[feats[f] for f in m.roi_heads.in_features], rois)
        dets = m.roi_heads.select(scores, boxes, [len(p) for p in props], batch.image_sizes)
        for d, size, img in zip(dets, batch.image_sizes, images):
            d["boxes"] = m.rescale_boxes(d["boxes"], size, tuple(img.shape[-2:]))
        return dets


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


def export_box_onnx(graph: BoxGraph, inputs: tuple[Tensor, ...], path: str | os.PathLike, opset: int = 17,
                    dynamic: bool = True) -> str:
    """Write the box stage to ONNX; dynamic batch, feature sizes and number of RoIs."""
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17, got {opset}")
    axes = None
    if dynamic:
        axes = {f: {0: "batch", 2: f"{f}_h", 3: f"{f}_w"} for f in graph.in_features}
        axes.update(rois={0: "rois"}, scores={0: "rois"}, boxes={0: "rois"})
    with torch.no_grad():
        torch.onnx.export(
            graph, inputs, str(path), dynamo=False, opset_version=opset, input_names=graph.input_names,
            output_names=graph.output_names, dynamic_axes=axes, do_constant_folding=True,
        )
    return str(path)


def export_box_program(graph: BoxGraph, inputs: tuple[Tensor, ...], dynamic: bool = True) -> Any:
    """``torch.export.export`` of the box stage; dynamic batch, feature sizes and number of RoIs."""
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        dims = [{0: batch, 2: torch.export.Dim(f"{f}_h", min=2), 3: torch.export.Dim(f"{f}_w", min=2)}
                for f in graph.in_features]
        shapes = (*dims, {0: torch.export.Dim("rois", min=2)})
        shapes = {"args": shapes}
    with torch.no_grad():
        return torch.export.export(graph, tuple(inputs), dynamic_shapes=shapes, strict=False)


def parity_box(graph: BoxGraph, inputs: list[tuple[Tensor, ...]], onnx_path: str | os.PathLike | None = None,
               program: Any = None) -> dict[str, dict[str, float]]:
    """Max abs difference of ``scores`` and ``boxes`` between the model's eager box stage and the
    ONNX file (onnxruntime) / exported program, per format, over ``inputs`` (``box_stage_inputs``)."""
    runners: dict[str, Any] = {}
    if onnx_path is not None:
        runners["onnx"] = onnx_runner(onnx_path, graph.input_names)
    if program is not None:
        runners["program"] = program_runner(program)
    worst: dict[str, dict[str, float]] = {k: {} for k in runners}
    for args in inputs:
        with torch.no_grad():
            ref = graph.reference(list(args[:-1]), args[-1])
            for fmt, run in runners.items():
                for k, v in _max_diffs(graph.output_names, ref, run(*args)).items():
                    worst[fmt][k] = max(worst[fmt].get(k, 0.0), v)
    return worst


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


def _parity(graph: RawGraph, run: Any, inputs: list[Tensor]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for x in inputs:
        with torch.no_grad():
            ref, got = graph(x), run(x)
        for k, v in _max_diffs(graph.output_names, ref, got).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst


def parity_onnx(graph: RawGraph, path: str | os.PathLike, inputs: list[Tensor]) -> dict[str, float]:
    """Max abs difference per output between onnxruntime and eager over ``inputs`` (each [B,3,H,W])."""
    return _parity(graph, onnx_runner(path, ["images"]), inputs)


def parity_program(graph: RawGraph, program: Any, inputs: list[Tensor]) -> dict[str, float]:
    """Max abs difference per output between the exported program and eager over ``inputs``."""
    return _parity(graph, program_runner(program), inputs)
