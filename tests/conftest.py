"""Shared fixtures: the repository root, ../shared reference data, and a small thread count."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir(repo_root: Path) -> Path:
    """``../shared`` next to the repository (read-only reference data); skips when absent."""
    path = (repo_root.parent / "shared").resolve()
    if not path.is_dir():
        pytest.skip(f"../shared not found: {path} (reference data lives next to the repository)")
    return path
