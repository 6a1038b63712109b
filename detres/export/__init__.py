"""Export detectors to ONNX and ``torch.export`` programs, with a parity check against eager."""
from __future__ import annotations

from detres.export.exporter import (
    RawGraph,
    export_onnx,
    export_program,
    parity_onnx,
    parity_program,
    raw_graph,
)

__all__ = ["RawGraph", "export_onnx", "export_program", "parity_onnx", "parity_program", "raw_graph"]
