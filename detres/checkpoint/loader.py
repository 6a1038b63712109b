"""Format detection, key mapping and loading with a missing/unexpected report."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detres.checkpoint.io import read_weights_file, to_tensor_dict, unwrap_state_dict
from detres.checkpoint.presnet import convert_presnet, is_presnet

logger = logging.getLogger(__name__)


@dataclass
class Converter:
    """A checkpoint layout: ``detect(raw_obj, state_dict)`` says whether a file is in it and
    ``convert(state_dict, model)`` returns the detres-named state dict."""

    name: str
    detect: Callable[[dict[str, Any], dict[str, Any]], bool]
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


_CONVERTERS: list[Converter] = []


def register_converter(conv: Converter) -> Converter:
    """Add a layout; later registrations are tried first (more specific layouts register later)."""
    _CONVERTERS.insert(0, conv)
    return conv


@dataclass
class LoadReport:
    """What a load did: the layout detected and the keys that did not line up."""

    source_format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"loaded {self.source_format} weights"]
        if self.missing:
            lines.append(f"  missing in file ({len(self.missing)}): {', '.join(self.missing[:20])}")
        if self.unexpected:
            lines.append(f"  unused from file ({len(self.unexpected)}): {', '.join(self.unexpected[:20])}")
        return "\n".join(lines)


def _is_detres(obj: dict[str, Any], sd: dict[str, Any]) -> bool:
    return obj.get("format") == "detres" or "detres_version" in obj


def convert_state_dict(obj: dict[str, Any], model: nn.Module, fmt: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Detect (or take ``fmt``) the layout of a raw checkpoint object and map it to ``model``'s names."""
    sd = to_tensor_dict(unwrap_state_dict(obj))
    if fmt in (None, "detres") and _is_detres(obj, sd):
        return "detres", sd
    for conv in _CONVERTERS:
        if (fmt is None and conv.detect(obj, sd)) or fmt == conv.name:
            return conv.name, conv.convert(sd, model)
    if fmt not in (None, "detres"):
        raise ValueError(f"unknown checkpoint format '{fmt}'; known: detres, {', '.join(c.name for c in _CONVERTERS)}")
    return "detres", sd


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: str, fmt: str) -> LoadReport:
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items() if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{path} ({fmt} layout) does not fit the model: " + "; ".join(mismatched[:8])
            + (f" (+{len(mismatched) - 8} more)" if len(mismatched) > 8 else "")
            + ". Check that the config matches the checkpoint (num_classes, depth, head sizes)."
        )
    result = model.load_state_dict(sd, strict=False)
    report = LoadReport(fmt, list(result.missing_keys), list(result.unexpected_keys))
    if not set(sd) & set(own):
        raise ValueError(
            f"{path}: no key of the file ({fmt} layout) matches the model; first file keys: "
            f"{', '.join(list(sd)[:5])}. Is this a checkpoint of another architecture?"
        )
    return report


def load_checkpoint(model: nn.Module, path: str | os.PathLike, fmt: str | None = None, use_ema: bool = False) -> LoadReport:
    """Load detres / torchvision / detectron2 / official-DETR weights into ``model``.

    Returns a LoadReport; raises ValueError naming the keys whose shapes do not fit.
    """
    obj = read_weights_file(path)
    if use_ema and isinstance(obj.get("ema"), dict):
        obj = {**obj, "model": obj["ema"]}
    fmt_found, sd = convert_state_dict(obj, model, fmt)
    report = _load_into(model, sd, str(path), fmt_found)
    report.meta = {k: v for k, v in obj.items() if k in ("dataset_meta", "iteration", "config")}
    logger.info("%s: %s", path, report)
    return report


_BACKBONE_PREFIXES = ("backbone.body.", "backbone.bottom_up.", "backbone.0.body.", "backbone.", "module.", "model.")


def _match_key(key: str, own: dict[str, Any]) -> str:
    """``key`` renamed to a key of ``own`` by stripping wrapper prefixes (nested ones too, e.g.
    ``module.backbone.body.``) and by timm's features_only flattening (``stages.0.x`` -> ``stages_0.x``)."""
    k = key
    while k not in own:
        under = k.replace(".", "_", 1)
        if under in own:
            return under
        prefix = next((p for p in _BACKBONE_PREFIXES if k.startswith(p)), None)
        if prefix is None:
            return key
        k = k[len(prefix):]
    return k


def _presnet_as_resnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official RT-DETR PResNet weights (alone, or the ``backbone.*`` part of a detector's state dict)
    renamed for ``ResNet(variant="d", first_block_projection=True)``; any other layout unchanged."""
    part = sd if is_presnet(sd) else {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return convert_presnet(part) if is_presnet(part) else sd


def load_backbone_weights(module: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load classifier-layout weights (torchvision / timm / detres / RT-DETR PResNet) into a backbone module.

    Detection checkpoints' backbone prefixes are stripped; a classifier head absent from the module
    (``fc.*``, ``classifier.*``, ``head.*``) is reported as unused, never an error.
    """
    obj = read_weights_file(path)
    sd = _presnet_as_resnet(to_tensor_dict(unwrap_state_dict(obj)))
    own = module.state_dict()
    sd = {_match_key(k, own): v for k, v in sd.items()}
    # BatchNorm's step counter carries no weights; a frozen_bn model has none.
    sd = {k: v for k, v in sd.items() if k in own or not k.endswith("num_batches_tracked")}
    report = _load_into(module, sd, str(path), "backbone")
    logger.info("%s: %s", path, report)
    return report
