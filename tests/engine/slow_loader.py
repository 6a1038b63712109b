"""A training loader that sleeps before each batch, so a test can send Ctrl-C in the middle of a run.
The batches are exactly ``detres.data.build_train_loader``'s."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from detres.data import build_train_loader


class SlowLoader:
    """Wraps a train loader; ``delay`` seconds before each batch (sleeping draws no random numbers)."""

    def __init__(self, loader: Any, delay: float) -> None:
        self.loader, self.delay = loader, delay
        self.dataset = getattr(loader, "dataset", None)
        self.meta = getattr(loader, "meta", None)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def slow_train_loader(cfg: Any, **kw: Any) -> SlowLoader:
    """``train.train_loader`` hook: ``build_train_loader`` with 0.3 s per batch."""
    return SlowLoader(build_train_loader(cfg, **kw), 0.3)
