"""Ctrl-C during training: finish the current iteration, save it, stop with exit code 130.

The first SIGINT only sets a flag, which the loop reads between iterations, so the checkpoint holds a
consistent state (never half an optimizer step) and a resume continues exactly. A second SIGINT stops at
once, without saving.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger("detres.train")

__all__ = ["TrainingInterrupted", "InterruptFlag", "EXIT_CODE"]

#: The shell's code for a process ended by SIGINT (128 + 2).
EXIT_CODE = 130


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``Trainer.train`` after Ctrl-C, once the current iteration is saved.

    Attributes: ``iteration`` (the last finished one) and ``path`` (its checkpoint, None on ranks > 0).
    """

    def __init__(self, iteration: int, path: str | None) -> None:
        super().__init__(f"interrupted at iter {iteration}; resume with `--resume`")
        self.iteration, self.path = iteration, path


class InterruptFlag:
    """``with flag.installed():`` turns the first SIGINT into ``flag.requested = True``."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: stop now, nothing saved
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: stopping after this iteration and saving a checkpoint (Ctrl-C again to stop "
                       "at once without saving)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[InterruptFlag]:
        """Install the handler (main thread only: elsewhere Python delivers no signals) and restore the old one."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
