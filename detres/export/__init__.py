"""Export a detector's traceable graphs to ONNX and ``torch.export`` programs, run the detector on
them, and check parity against eager (see ``detres.modeling.detectors.base.GraphSpec``)."""
from __future__ import annotations

from detres.export.check import export_and_check, random_images, summary_lines
from detres.export.exporter import (
    ExportedDetector,
    export_onnx,
    export_program,
    graph_diffs,
    load_runners,
    onnx_runner,
    program_runner,
    record_graph_inputs,
)

__all__ = [
    "ExportedDetector", "export_and_check", "export_onnx", "export_program", "graph_diffs", "load_runners",
    "onnx_runner", "program_runner", "random_images", "record_graph_inputs", "summary_lines",
]
