"""Run a detector over a loader of ``list[Sample]`` batches and score it."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import torch

from detres.utils.distributed import is_main_process


def inference_on_dataset(model: torch.nn.Module, loader: Iterable, evaluator: Any, *, progress: bool = True) -> dict:
    """``model.eval()`` + ``torch.inference_mode()`` over ``loader``; feeds ``evaluator.process``, returns
    ``evaluator.evaluate()`` plus ``time_per_image`` (s) under ``timing``. ``progress``: a progress bar
    on stderr when it is a terminal."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = None
    # tqdm redraws with carriage returns: only on a terminal, never into a log file or a pipe.
    if progress and is_main_process() and sys.stderr.isatty():
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="eval", unit="batch", dynamic_ncols=True)
        except ImportError:
            bar = None
    n_img, t_model, t0 = 0, 0.0, time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in loader:
                t = time.perf_counter()
                outputs = model([s.image for s in batch])
                t_model += time.perf_counter() - t
                evaluator.process(batch, outputs)
                n_img += len(batch)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    t_inf = time.perf_counter() - t0
    results = evaluator.evaluate()
    if results:
        results["timing"] = {"images": n_img, "inference_s": t_inf, "model_s_per_image": t_model / max(n_img, 1),
                             "eval_s": time.perf_counter() - t0 - t_inf}
    return results
