"""Schemas of the config sections that have no ``_target_``: their keys are fixed here.

Sections with a ``_target_`` (``model``, ``optimizer``, ``lr_scheduler``, datasets, transforms) are
checked against their constructor's signature instead (see ``validate.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class TrainConfig:
    """``train:`` keys: the trainer's schedule, batching, precision and output (see detres/engine/trainer.py).

    batch_size: images per optimizer step, in total over all processes and accumulation steps.
    max_iter / epochs: optimizer steps (``epochs`` wins when set: ceil(epochs * len(dataset) / batch_size)).
    amp: None, ``fp16`` (autocast + GradScaler) or ``bf16`` (autocast).
    clip_grad / clip_grad_type: clip the gradient ``norm`` (total L2) or ``value`` to this; None = off.
    accumulate: split each step's batch into this many forward/backward passes.
    channels_last: train with NHWC weights (so NHWC activations and gradients): oneDNN and cuDNN run
      their fastest convolution kernels without layout reorders (a Faster R-CNN R50-FPN step is ~19%
      faster on CPU). Checkpoints are the same either way.
    ema / ema_decay / ema_warmup: exponential moving average of the weights (decay ramps up over
      ``ema_warmup`` steps); evaluation and ``model_final.pth``'s ``ema`` entry use it.
    backbone_lr_mult: LR multiplier of parameters under ``backbone.``.
    weight_decay_norm / weight_decay_bias: weight decay of norm layers / biases (None = the optimizer's).
    param_name_lr_mult: {name part: lr_mult} for parameters whose name contains the part, e.g.
      ``{sampling_offsets: 0.1, reference_points: 0.1}`` (Deformable DETR's linear projections); a
      part set to null is dropped (to remove one that a ``_base_`` sets).
    param_overrides: {param-name prefix: {lr_mult, weight_decay}}; the longest matching prefix wins.
    checkpoint_period: write a resumable ``model_{iter:07d}.pth`` every this many iterations (0 = none);
      ``model_final.pth`` / ``model_best.pth`` hold no optimizer state.
    keep_last: periodic checkpoints kept, newest first (0 = all); best_metric / best_mode: the eval stat
      kept as ``model_best.pth`` (written only when an evaluation runs).
    train_loader: dotted path of a function with ``detres.data.build_train_loader``'s signature
      (None = that one), for custom data pipelines.
    """

    output_dir: str = "output"
    max_iter: int = 1000
    epochs: float | None = None
    batch_size: int = 2
    eval_period: int = 0
    checkpoint_period: int = 0
    keep_last: int = 3
    best_metric: str | None = "AP"
    best_mode: str = "max"  # max | min
    seed: int = 42
    deterministic: bool = False
    log_period: int = 20
    amp: str | None = None  # None | fp16 | bf16
    clip_grad: float | None = None
    clip_grad_type: str = "norm"  # norm | value
    accumulate: int = 1
    channels_last: bool = True
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: int = 2000
    backbone_lr_mult: float = 1.0
    weight_decay_norm: float | None = 0.0
    weight_decay_bias: float | None = None
    param_name_lr_mult: dict[str, float | None] = field(default_factory=dict)
    param_overrides: dict[str, Any] = field(default_factory=dict)
    sync_bn: bool = False
    find_unused_parameters: bool = False
    device: str = "auto"
    tensorboard: bool = True
    progress_bar: bool | None = None  # None: only when stderr is a terminal
    init_weights: str | None = None
    train_loader: str | None = None


@dataclass
class EvalConfig:
    """``eval:`` keys: evaluation batching and scoring (backend, max detections, PR-curve files)."""

    #: keys that were accepted once but never read: (their old default, what to do instead). A saved
    #: run folder's config.yaml holds them at the default, which is accepted and ignored; any other
    #: value asked for something that never happened, so it is refused with the advice.
    removed_keys: ClassVar[dict[str, tuple[Any, str]]] = {
        "pad_policy": (None, "set model.input.pad_policy_test (per_image | batch_max) instead"),
        "per_category": (True, "the per-category table is always computed and written; delete the key"),
        "max_images": (None, "evaluate a smaller data.val (e.g. a trimmed annotation file); delete the key"),
    }

    batch_size: int = 1
    backend: str = "auto"  # auto | faster_coco_eval | pycocotools | detres
    max_dets: list[int] = field(default_factory=lambda: [1, 10, 100])
    pr_curve: bool = False


@dataclass
class DataConfig:
    """``data:`` keys: datasets, transforms and loader settings."""

    train: Any = None
    val: Any = None
    train_transforms: Any = None
    val_transforms: Any = None
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    filter_empty: bool = True
    pin_memory: bool = True
    on_bad_image: str = "raise"  # raise | skip (log a warning, count it, load the next image)


#: top-level key -> dataclass schema, or None for a ``_target_`` node / plain value.
TOP_LEVEL: dict[str, Any] = {
    "model": None,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "optimizer": None,
    "lr_scheduler": None,
    "num_classes": None,
    "custom_imports": None,
    "class_names": None,
}
