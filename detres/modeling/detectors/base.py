"""Detector base class: input handling shared by every detector (DESIGN.md, 'Public API').

``preprocess`` turns RGB 0..255 images into a normalized, padded ``ImageBatch`` (resizing at test
time only; training-time resizing belongs to the data transforms). In eval mode ``forward`` can group
images by their own padded size (``pad_policy_test: per_image``) so that an image's detections never
depend on what else is in its batch.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.structures import ImageBatch
from detres.structures.boxes import scale_boxes

PAD_POLICIES = ("per_image", "batch_max")
#: padding multiple for a backbone that does not state its ``size_divisibility``
DEFAULT_SIZE_DIVISIBILITY = 32


@dataclass
class InputConfig:
    """The model config's ``input:`` block.

    format: channel order the weights expect (``RGB``, or ``BGR`` for caffe-style detectron2 weights).
    pixel_mean / pixel_std: in 0..255 units, in ``format`` order.
    min_size_test / max_size_test: test-time resize of the shorter / longer side (0 = no resize).
    size_divisibility: pad H and W up to a multiple of this; None (the default) takes the backbone's
        ``size_divisibility`` (32 for a backbone without one).
    pad_policy_test: ``per_image`` (batch-invariant, the default) or ``batch_max`` (the references').
    fixed_size_test: [H, W]: test-time resize of every image to exactly this size, aspect ratio not kept
        (RT-DETR's deploy input; with ``unit_range``, mean 0 and std 255 it is the [0, 1] scaling);
        ``min_size_test`` / ``max_size_test`` are then unused.
    unit_range: scale pixels to 0..1 first and normalize with mean/255, std/255: the same maths in
        torchvision's float arithmetic, so its models see bitwise-identical inputs.
    """

    format: str = "RGB"
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisibility: int | None = None
    pad_policy_test: str = "per_image"
    unit_range: bool = False
    fixed_size_test: list[int] | None = None

    def __post_init__(self) -> None:
        if self.format not in ("RGB", "BGR"):
            raise ValueError(f"model.input.format must be RGB or BGR, got {self.format!r}")
        if self.pad_policy_test not in PAD_POLICIES:
            raise ValueError(f"model.input.pad_policy_test must be one of {PAD_POLICIES}, got {self.pad_policy_test!r}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("model.input.pixel_mean and pixel_std need 3 values each")
        if self.fixed_size_test is not None and (len(self.fixed_size_test) != 2 or min(self.fixed_size_test) <= 0):
            raise ValueError(f"model.input.fixed_size_test must be [H, W] with positive sizes, got {self.fixed_size_test}")


@dataclass
class GraphSpec:
    """A traceable part of a detector's ``forward_raw``: tensors in, a tuple of tensors out.

    ``forward_raw`` runs it through ``Detector.run_graph(name, ...)``, so an exported copy can take
    its place with no other change to the pipeline (export never re-implements a detector).

    module: the traceable module (no data-dependent shapes inside).
    input_names / output_names: one name per positional input / output.
    dynamic_dims: per input name, ``{dim: (symbol, multiple_of)}`` for the dims that may vary
        (batch, height, width, number of boxes); a symbol shared by inputs is one dimension.
    checked: the outputs an export parity check holds to a tolerance (None = all); large-magnitude
        intermediate maps such as pyramid features are reported only.
    min_sizes: per symbol, the smallest size the graph is exported for (default 1), where a smaller
        input would make some map 1 pixel wide and ``torch.export`` would specialize on it.
    selection: the output holding indices that ``module`` also accepts as one more positional input
        (two-stage DETRs' top-k proposals). Exactly tied scores (fresh random weights) may be ordered
        differently by an exported top-k; a parity check then reruns eager with the exported graph's
        selection and compares the other outputs row by row (``detres.export.graph_diffs``).
    """

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_dims: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    checked: list[str] | None = None
    min_sizes: dict[str, int] = field(default_factory=dict)
    selection: str | None = None


class TracedCall(nn.Module):
    """A module whose forward is ``fn(*args, **kwargs)``, a method of ``owner``: what export traces.

    ``owner`` is held as a child so that tracing sees its parameters and buffers.
    """

    def __init__(self, owner: nn.Module, fn: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__()
        self.owner = owner
        self._fn, self._kwargs = fn, kwargs

    def forward(self, *args: Tensor) -> Any:
        return self._fn(*args, **self._kwargs)


def test_resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """Scale that brings the shorter side to ``min_size`` without the longer passing ``max_size``."""
    if min_size <= 0:
        return 1.0
    scale = min_size / min(h, w)
    if max_size > 0:
        scale = min(scale, max_size / max(h, w))
    return scale


class Detector(nn.Module):
    """Base of every detector. Subclasses implement ``forward_raw``, ``losses`` and ``postprocess``."""

    def __init__(self, input: InputConfig | None = None) -> None:
        super().__init__()
        self.input = input or InputConfig()
        div = 255.0 if self.input.unit_range else 1.0
        mean = [m / div for m in self.input.pixel_mean]
        std = [s / div for s in self.input.pixel_std]
        self.register_buffer("pixel_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self.pad_policy_test = self.input.pad_policy_test
        self._graph_runners: dict[str, Callable[..., Any]] = {}

    @property
    def size_divisibility(self) -> int:
        """Padding multiple: ``input.size_divisibility`` when set, else the backbone's (default 32)."""
        if self.input.size_divisibility is not None:
            return self.input.size_divisibility
        div = getattr(getattr(self, "backbone", None), "size_divisibility", None)
        return int(div) if div else DEFAULT_SIZE_DIVISIBILITY

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------------------- input
    def normalize(self, image: Tensor) -> Tensor:
        """[3, H, W] RGB 0..255 (uint8 or float) -> normalized float in the weights' channel order."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape [3, H, W], got {tuple(image.shape)}")
        x = image.to(device=self.device, dtype=torch.float32)
        if self.input.format == "BGR":
            x = x.flip(0)
        if self.input.unit_range:
            x = x / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def resize_for_test(self, x: Tensor) -> Tensor:
        """Bilinear test-time resize of a normalized [3, H, W] image (torchvision's recipe); with
        ``fixed_size_test`` to exactly that size, antialiased like the reference's PIL resize."""
        h, w = x.shape[-2:]
        if self.input.fixed_size_test is not None:
            size = tuple(int(v) for v in self.input.fixed_size_test)
            if (h, w) == size:
                return x
            return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        scale = test_resize_scale(h, w, self.input.min_size_test, self.input.max_size_test)
        if scale == 1.0:
            return x
        return F.interpolate(
            x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def preprocess(self, images: list[Tensor], resize: bool | None = None) -> ImageBatch:
        """Normalize, (test-)resize and pad images into one ``ImageBatch``.

        images: list of [3, H_i, W_i] RGB 0..255. ``resize`` defaults to ``not self.training``.
        """
        if resize is None:
            resize = not self.training
        tensors = [self.normalize(im) for im in images]
        if resize:
            tensors = [self.resize_for_test(t) for t in tensors]
        return ImageBatch.from_tensors(tensors, self.size_divisibility)

    def padded_size(self, image: Tensor) -> tuple[int, int]:
        """The (H, W) an image is padded to under the ``per_image`` policy (depends on it alone)."""
        h, w = image.shape[-2:]
        if self.input.fixed_size_test is not None:
            h, w = (int(v) for v in self.input.fixed_size_test)
        s = 1.0 if self.input.fixed_size_test is not None else test_resize_scale(
            h, w, self.input.min_size_test, self.input.max_size_test)
        if s != 1.0:  # F.interpolate with recompute_scale_factor floors the scaled size
            h, w = int(math.floor(h * s)), int(math.floor(w * s))
        d = max(1, self.size_divisibility)
        return (h + d - 1) // d * d, (w + d - 1) // d * d

    # ----------------------------------------------------------------------------- forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Training (targets given): dict of named losses. Eval: list of per-image
        {"boxes" [N,4] xyxy in the input image's pixels, "scores" [N], "labels" [N] 0..K-1}."""
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            batch = self.preprocess(images, resize=False)
            targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
            return self.losses(batch, targets)
        return self.inference(images)

    def inference(self, images: list[Tensor], pad_policy: str | None = None) -> list[dict[str, Tensor]]:
        """Detections per image; ``per_image`` padding runs same-padded-size groups together."""
        results: list[dict[str, Tensor] | None] = [None] * len(images)
        for idx in self.padding_groups(images, pad_policy):
            group = [images[i] for i in idx]
            batch = self.preprocess(group, resize=True)
            raw = self.forward_raw(batch)
            orig_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in group]
            for i, r in zip(idx, self.postprocess(raw, batch, orig_sizes)):
                results[i] = r
        return results  # type: ignore[return-value]

    def padding_groups(self, images: list[Tensor], pad_policy: str | None = None) -> list[list[int]]:
        """Indices of the images that ``inference`` runs as one batch: all of them (``batch_max``) or
        those of the same padded size (``per_image``, the test-time default)."""
        policy = pad_policy or self.pad_policy_test
        if policy == "batch_max" or len(images) == 1:
            return [list(range(len(images)))]
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            by_size[self.padded_size(im)].append(i)
        return list(by_size.values())

    @staticmethod
    def rescale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
        """Map [N, 4] xyxy boxes from a resized image of ``from_size`` back to ``to_size`` (h, w)."""
        if from_size == to_size:
            return boxes
        return scale_boxes(boxes, to_size[1] / from_size[1], to_size[0] / from_size[0])

    # ----------------------------------------------------------------------------- traceable parts
    def graphs(self) -> dict[str, GraphSpec]:
        """The traceable parts of ``forward_raw`` by name, in the order it runs them (what export writes)."""
        raise NotImplementedError(f"{type(self).__name__} declares no traceable graphs")

    def run_graph(self, name: str, eager: Callable[..., tuple[Tensor, ...]], *args: Tensor) -> tuple[Tensor, ...]:
        """Run the traceable part ``name`` of ``forward_raw``: ``eager(*args)``, or the replacement set
        by ``replace_graphs`` (an exported graph, or a recorder)."""
        runner = self._graph_runners.get(name)
        return tuple(runner(*args)) if runner is not None else tuple(eager(*args))

    @contextmanager
    def replace_graphs(self, runners: Mapping[str, Callable[..., Any]]) -> Iterator["Detector"]:
        """Within the block, ``run_graph(name, ...)`` calls ``runners[name]`` (same inputs, outputs in
        ``graphs()[name].output_names`` order) instead of the eager code."""
        unknown = set(runners) - set(self.graphs())
        if unknown:
            raise KeyError(f"{type(self).__name__} has no graphs {sorted(unknown)}; it has {list(self.graphs())}")
        saved, self._graph_runners = self._graph_runners, dict(runners)
        try:
            yield self
        finally:
            self._graph_runners = saved

    # ----------------------------------------------------------------------------- to implement
    def forward_raw(self, batch: ImageBatch) -> dict[str, Any]:
        """The head's raw outputs for a batch (eval and training)."""
        raise NotImplementedError

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Named training losses."""
        raise NotImplementedError

    def postprocess(
        self, raw: dict[str, Any], batch: ImageBatch, orig_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per-image detections in ``orig_sizes`` pixels."""
        raise NotImplementedError
