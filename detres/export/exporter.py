"""ONNX (opset >= 17) and ``torch.export`` export of a detector's traceable graphs.

A detector declares the traceable parts of its ``forward_raw`` in ``graphs()`` (``GraphSpec``: a
module, input and output names, dynamic dims) and runs them through ``run_graph``. Export writes
each graph on inputs recorded from a real forward pass, and ``ExportedDetector`` runs the model with
the exported graphs in their place (``Detector.replace_graphs``): preprocessing, the eager steps
between graphs (Faster R-CNN's proposal selection) and postprocessing are the model's own code, so
this package holds no detector logic of its own (no anchors, RoI pooling, NMS or matching).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detres.modeling.detectors.base import Detector, GraphSpec

Runner = Callable[..., Sequence[Tensor]]


def record_graph_inputs(model: Detector, images: Sequence[Tensor]) -> dict[str, tuple[Tensor, ...]]:
    """The inputs each of ``model.graphs()`` receives in ``forward_raw`` on ``images`` (list of
    [3, H, W] RGB 0..255, preprocessed without test-time resizing and padded as one batch)."""
    specs = model.graphs()
    records: dict[str, tuple[Tensor, ...]] = {}

    def recorder(name: str) -> Runner:
        def run(*args: Tensor) -> Sequence[Tensor]:
            records.setdefault(name, tuple(a.detach().clone() for a in args))
            return specs[name].module(*args)

        return run

    model.eval()
    with torch.no_grad(), model.replace_graphs({n: recorder(n) for n in specs}):
        model.forward_raw(model.preprocess(list(images), resize=False))
    return records


def export_onnx(spec: GraphSpec, args: tuple[Tensor, ...], path: str | os.PathLike, opset: int = 17,
                dynamic: bool = True) -> str:
    """Write ``spec.module`` to ONNX (TorchScript exporter) traced on ``args``; ``dynamic`` keeps the
    dims in ``spec.dynamic_dims`` symbolic."""
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17 (LayerNorm, ...), got {opset}")
    axes = None
    if dynamic:
        axes = {name: {d: sym for d, (sym, _) in dims.items()} for name, dims in spec.dynamic_dims.items()}
    with torch.no_grad():
        torch.onnx.export(
            spec.module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=spec.input_names,
            output_names=spec.output_names, dynamic_axes=axes, do_constant_folding=True,
        )
    return str(path)


def export_program(spec: GraphSpec, args: tuple[Tensor, ...], dynamic: bool = True) -> Any:
    """``torch.export.export`` of ``spec.module`` on ``args``; ``dynamic`` makes the dims in
    ``spec.dynamic_dims`` symbolic (a dim with ``multiple_of`` m > 1 as m times a symbol), from
    ``spec.min_sizes`` (default 1) up. A dim of
    size 1 in ``args`` is specialized by torch.export, so record on batches of two or more."""
    shapes = None
    if dynamic:
        symbols: dict[tuple[str, int], Any] = {}
        per_input = []
        for name in spec.input_names:
            dims = {}
            for d, (sym, mult) in spec.dynamic_dims.get(name, {}).items():
                if (sym, mult) not in symbols:
                    low = -(-spec.min_sizes.get(sym, 1) // mult)  # in units of the multiple, rounded up
                    base = torch.export.Dim(sym, min=low, max=4096 // mult) if mult > 1 else torch.export.Dim(sym, min=low)
                    symbols[(sym, mult)] = base * mult if mult > 1 else base
                dims[d] = symbols[(sym, mult)]
            per_input.append(dims or None)
        shapes = {"args": tuple(per_input)}
    with torch.no_grad():
        return torch.export.export(spec.module.eval(), tuple(args), dynamic_shapes=shapes, strict=False)


def onnx_runner(path: str | os.PathLike, input_names: list[str]) -> Runner:
    """A callable running an ONNX file on onnxruntime (CPU): tensors in, list of tensors out."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda *a: [torch.from_numpy(o) for o in sess.run(None, {n: t.numpy() for n, t in zip(input_names, a)})]


def program_runner(program: Any) -> Runner:
    """A callable running a ``torch.export`` program: tensors in, list of tensors out."""
    mod = program.module()
    return lambda *a: list(mod(*a))


class ExportedDetector:
    """``model`` with its traceable graphs replaced by ``runners`` (name -> ``onnx_runner`` /
    ``program_runner`` or any callable of that form); everything else is the model's own code.

    >>> run = ExportedDetector(model, {"dense": onnx_runner("out/dense.onnx", ["images"]), ...})
    >>> dets = run(images)  # like model(images): per image {"boxes", "scores", "labels"}
    """

    def __init__(self, model: Detector, runners: Mapping[str, Runner]) -> None:
        missing = set(model.graphs()) - set(runners)
        if missing:
            raise KeyError(f"ExportedDetector needs a runner for every graph; missing {sorted(missing)}")
        self.model, self.runners = model.eval(), dict(runners)

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """images: list of [3, H, W] RGB 0..255 -> per image {"boxes", "scores", "labels"} in its pixels."""
        with self.model.replace_graphs(self.runners):
            return self.model.inference(images)


def load_runners(model: Detector, folder: str | os.PathLike, fmt: str = "onnx") -> dict[str, Runner]:
    """Runners for ``model``'s graphs from ``folder/<graph>.onnx`` (``fmt="onnx"``) or ``.pt2`` files."""
    folder = Path(folder)
    runners: dict[str, Runner] = {}
    for name, spec in model.graphs().items():
        path = folder / f"{name}.{'onnx' if fmt == 'onnx' else 'pt2'}"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no exported '{name}' graph; run tools/export.py --out {folder} first")
        runners[name] = onnx_runner(path, spec.input_names) if fmt == "onnx" else program_runner(torch.export.load(str(path)))
    return runners


def graph_diffs(spec: GraphSpec, runner: Runner, inputs: Sequence[tuple[Tensor, ...]]) -> dict[str, float]:
    """Max abs difference per output between ``spec.module`` (eager) and ``runner`` over ``inputs``.

    With ``spec.selection``, that output's entry is the number of slots where the runner selected
    another index than eager (tied scores); where any differ, eager is rerun with the runner's
    selection, so the other outputs are compared row for row on the same selected proposals.
    """
    worst: dict[str, float] = {}
    sel = spec.output_names.index(spec.selection) if spec.selection is not None else None
    with torch.no_grad():
        for args in inputs:
            ref, got = spec.module(*args), runner(*args)
            swaps = 0
            if sel is not None:
                picked = torch.as_tensor(got[sel]).long()
                swaps = int((picked != ref[sel]).sum())
                if swaps:
                    ref = spec.module(*args, picked)
            for i, (name, r, g) in enumerate(zip(spec.output_names, ref, got)):
                if i == sel:
                    diff = float(swaps)
                else:
                    diff = float((torch.as_tensor(g).float() - r.float()).abs().max()) if r.numel() else 0.0
                worst[name] = max(worst.get(name, 0.0), diff)
    return worst
