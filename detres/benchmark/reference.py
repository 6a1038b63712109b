"""torchvision Faster R-CNN references on the same weights as a detres model, and timing helpers.

The reference is built as torchvision builds its COCO models (FrozenBatchNorm2d in the ResNet, 91
class slots), with seeded random weights and random frozen-BN statistics, so that detections are
non-trivial; its state dict goes through detres' registered ``torchvision`` converter into the
detres model (``num_classes`` 90 keeps every slot, detres label = torchvision label - 1).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from detres.utils.compare import compare_detections

__all__ = ["build_torchvision_frcnn", "load_reference_weights", "compare_detections", "time_alternating",
           "summarize"]


def _randomize(model: nn.Module, seed: int) -> None:
    """Seeded random weights with non-degenerate frozen-BN statistics and a confident class head."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        # Random heads score every class near 1/91 < score_thresh: a wider class head gives detections.
        pred = model.roi_heads.box_predictor
        pred.cls_score.weight.copy_(torch.randn(pred.cls_score.weight.shape, generator=g) * 0.3)
        pred.bbox_pred.weight.copy_(torch.randn(pred.bbox_pred.weight.shape, generator=g) * 0.01)


def build_torchvision_frcnn(version: str = "v1", seed: int = 0) -> nn.Module:
    """torchvision ``fasterrcnn_resnet50_fpn`` (``v1``) or ``_v2`` as its COCO weights are built
    (FrozenBatchNorm2d backbone, 3 trainable stages, 91 classes), seeded random weights, eval mode."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn_v2
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(seed)
    if version == "v1":
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
        model = FasterRCNN(backbone, num_classes=91)
    elif version == "v2":
        model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    else:
        raise ValueError(f"torchvision reference version must be v1 or v2, got {version!r}")
    _randomize(model, seed)
    return model.eval()


def load_reference_weights(model: nn.Module, reference: nn.Module) -> Any:
    """Write ``reference``'s state dict to a temp file and load it into ``model`` with
    ``detres.load_checkpoint`` (auto-detected torchvision layout); returns the LoadReport."""
    from detres.checkpoint import load_checkpoint

    fd, path = tempfile.mkstemp(suffix=".pth")
    os.close(fd)
    try:
        torch.save(reference.state_dict(), path)
        report = load_checkpoint(model, path)
    finally:
        os.unlink(path)
    if report.source_format != "torchvision" or report.missing:
        raise ValueError(f"torchvision weights did not fit the detres model: {report}")
    return report


def time_alternating(
    fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, dict[str, list[float]]]:
    """Run every fn ``warmup`` times, then ``iters`` rounds alternating them (order flipped each round
    so neither always runs first). Per name: ``wall`` seconds per call and ``cpu`` seconds (this
    process' CPU time, all threads; robust to other processes on a shared machine)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    names = list(fns)
    for i in range(iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            sync()
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            times[name]["wall"].append(time.perf_counter() - t)
            times[name]["cpu"].append(time.process_time() - c)
    return times


def summarize(ts: list[float]) -> dict[str, float]:
    """median, IQR (q75 - q25), min and max of a list of seconds."""
    if len(ts) >= 2:
        q = statistics.quantiles(ts, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(ts), "iqr": iqr, "min": min(ts), "max": max(ts)}
