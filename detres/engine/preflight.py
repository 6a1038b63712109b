"""Checks a training run makes before its first step, so a doomed run stops at once with one clear line.

- ``check_backbone_initialised``: a backbone with frozen layers and no weights would keep those layers
  at their random initial values for the whole run (the COCO recipes' ``norm: frozen_bn, freeze_at: 2``).
- ``check_image_files``: every image the training set lists exists on disk (a cheap ``stat`` per file),
  so a missing file is found before the run, not at the step that first draws it.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.data.io import ImageReadError

logger = logging.getLogger("detres.train")

__all__ = ["FrozenRandomBackboneError", "check_backbone_initialised", "check_image_files", "frozen_parts"]

WEIGHTS_HELP = (
    "Give it ImageNet weights: `model.backbone.weights=PATH` (a torchvision file such as resnet50-0676ba61.pth "
    "or resnet18-f37072fd.pth, or a timm .pth/.safetensors; see docs/training.md, 'Pretrained backbone "
    "weights'), or start from a whole detector with `--weights CKPT` (detres, or converted by tools/convert.py). "
    "Or train the backbone from scratch with trainable norms: `model.backbone.norm=gn model.backbone.freeze_at=0`."
)


class FrozenRandomBackboneError(ValueError):
    """A training run whose backbone has frozen layers that no weights initialise."""


def frozen_parts(backbone: nn.Module) -> list[str]:
    """What is frozen in ``backbone``: ``freeze_at=K`` and/or ``frozen_bn`` (empty when nothing is)."""
    parts = []
    freeze_at = getattr(backbone, "freeze_at", None)
    if isinstance(freeze_at, int) and freeze_at >= 1:
        parts.append(f"freeze_at: {freeze_at}")
    elif any(not p.requires_grad for p in backbone.parameters()):
        parts.append("frozen parameters")
    if any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()):
        parts.append("norm: frozen_bn")
    return parts


def check_backbone_initialised(cfg: DictConfig, model: nn.Module) -> None:
    """Raise ``FrozenRandomBackboneError`` when ``model.backbone`` is partly frozen and its config node
    ``model.backbone`` sets no ``weights``. Call only for a fresh start with no ``train.init_weights``."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return
    node = cfg.get("model", None)
    node = node.get("backbone", None) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig) or node.get("weights", None):
        return  # a backbone the config does not describe (built inside the detector) is the detector's affair
    parts = frozen_parts(backbone)
    if parts:
        raise FrozenRandomBackboneError(
            f"model.backbone has frozen layers ({', '.join(parts)}) but no weights: they would stay at their "
            f"random initial values for the whole run. {WEIGHTS_HELP}"
        )


def check_image_files(dataset: Any, on_bad_image: str = "raise") -> int:
    """Check that every image ``dataset.records`` names exists; returns how many are missing.

    With ``on_bad_image: raise`` a missing file raises ``ImageReadError`` naming the first one, its
    image id and the count; with ``skip`` the count is logged (the loader skips them as it meets them).
    Datasets without ``records`` (custom loaders) are not checked.
    """
    records = getattr(dataset, "records", None)
    if not isinstance(records, list):
        return 0
    missing = [r for r in records if isinstance(r, dict) and "file_name" in r and not os.path.isfile(r["file_name"])]
    if not missing:
        return 0
    first = missing[0]
    name = getattr(dataset, "name", "training set")
    what = f"{len(missing)} of {len(records)} images listed by the {name} do not exist"
    if on_bad_image == "skip":
        logger.warning("%s (first: %s, image id %s); data.on_bad_image=skip skips them",
                       what, first["file_name"], first.get("image_id"))
        return len(missing)
    raise ImageReadError(
        f"image {first['file_name']} (image id {first.get('image_id')}): file not found; {what}. Check "
        "image_root / file_name in the annotations (tools/check_dataset.py lists every one), or set "
        "data.on_bad_image=skip to train without them."
    )
