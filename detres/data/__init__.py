"""Datasets, transforms, samplers and loaders; importing this fills DATASETS and TRANSFORMS."""
from __future__ import annotations
