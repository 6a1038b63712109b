"""Detection heads: built with ``input_shape=neck.output_shape()``."""
from __future__ import annotations
