"""A tiny synthetic shapes dataset shared by the data tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from detres.data.shapes import make_shapes


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 10 val shapes images (seed 3)."""
    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, 24, 10, seed=3)
    return out
