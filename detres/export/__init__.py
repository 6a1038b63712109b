"""Export detectors to ONNX and ``torch.export`` programs, with a parity check against eager."""
from __future__ import annotations

from detres.export.exporter import (
    BoxGraph,
    ExportedFasterRCNN,
    RawGraph,
    box_stage_inputs,
    export_box_onnx,
    export_box_program,
    export_onnx,
    export_program,
    onnx_runner,
    parity_box,
    parity_onnx,
    parity_program,
    program_runner,
    raw_graph,
)

__all__ = [
    "BoxGraph", "ExportedFasterRCNN", "RawGraph", "onnx_runner", "program_runner", "box_stage_inputs", "export_box_onnx", "export_box_program", "parity_box",
    "export_onnx", "export_program", "parity_onnx", "parity_program", "raw_graph"]
