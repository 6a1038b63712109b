"""``detres convert``'s library side: which converters exist, the default target config per source
layout, the config read from a checkpoint whose layout says its architecture (official Deformable
DETR, DINO, RT-DETR), and converting a reference checkpoint into a built detres model's checkpoint file."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from detres.checkpoint.coco_layout import coco_dataset_meta
from detres.checkpoint.deformable_detr import deformable_detr_config
from detres.checkpoint.dino import dino_config
from detres.checkpoint.io import read_weights_file, to_tensor_dict, unwrap_state_dict
from detres.checkpoint.loader import _CONVERTERS, convert_state_dict
from detres.checkpoint.rtdetr import rtdetr_config

__all__ = ["DEFAULT_CONFIGS", "CONFIG_READERS", "converter_names", "default_config", "config_from_checkpoint",
           "write_config", "convert_checkpoint"]

#: config used when none is given, per source layout (``_v2`` picked from the keys), relative to the repo.
DEFAULT_CONFIGS = {
    "torchvision": "configs/faster_rcnn/faster_rcnn_r50_fpn_torchvision_coco.yaml",
    "torchvision_v2": "configs/faster_rcnn/faster_rcnn_r50_fpn_v2_torchvision_coco.yaml",
    "detectron2": "configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.yaml",
}


#: source layouts whose tensors say the whole architecture: layout -> (state_dict, **options) ->
#: (config, header comment). ``tools/convert.py --out DIR`` writes that config as DIR/config.yaml.
CONFIG_READERS: dict[str, Callable[..., tuple[DictConfig, str]]] = {
    "deformable_detr": deformable_detr_config,
    "dino": dino_config,
    "rtdetr": rtdetr_config,
}


def converter_names() -> list[str]:
    """Names of the registered checkpoint converters."""
    return sorted(c.name for c in _CONVERTERS)


def default_config(fmt: str, src: str | os.PathLike) -> str:
    """The repository config whose model fits a ``fmt`` checkpoint (torchvision v1 or v2 by its keys)."""
    if fmt == "torchvision":
        keys = unwrap_state_dict(read_weights_file(src))
        if any(k.startswith("roi_heads.box_head.0.") for k in keys):
            fmt = "torchvision_v2"
    if fmt not in DEFAULT_CONFIGS:
        raise ValueError(f"no default config for --from {fmt}; pass --config CONFIG.yaml of the target model")
    path = Path(__file__).resolve().parents[2] / DEFAULT_CONFIGS[fmt]
    if not path.is_file():
        raise FileNotFoundError(f"default config {path} not found; pass --config")
    return str(path)


def config_from_checkpoint(fmt: str, src: str | os.PathLike, **options: Any) -> tuple[DictConfig, str]:
    """(config, header comment) of the model a ``fmt`` checkpoint holds, read from its tensors
    (``options``: the reader's, ``nheads`` / ``num_queries`` for deformable_detr, dino and rtdetr)."""
    if fmt not in CONFIG_READERS:
        raise ValueError(f"--from {fmt} checkpoints do not say their architecture; pass --config CONFIG.yaml "
                         f"(config readers: {', '.join(sorted(CONFIG_READERS))})")
    sd = to_tensor_dict(unwrap_state_dict(read_weights_file(src)))
    return CONFIG_READERS[fmt](sd, **options)


def write_config(cfg: DictConfig, path: str | os.PathLike, header: str = "") -> None:
    """Write ``cfg`` as YAML (interpolations kept), ``header`` as leading ``#`` comment lines."""
    text = "".join(f"# {line}\n" for line in header.splitlines()) + OmegaConf.to_yaml(cfg)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def convert_checkpoint(model: nn.Module, src: str | os.PathLike, fmt: str, dst: str | os.PathLike,
                       num_classes: int = 0) -> Any:
    """Map ``src`` (``fmt`` layout) onto ``model`` (every shape checked), load it, and write
    ``{"format": "detres", "model", "dataset_meta", "converted_from"}`` to ``dst``; returns
    ``load_state_dict``'s missing / unexpected keys. ``dataset_meta``: the file's, else the COCO
    layout's for ``num_classes`` when it has one, else None."""
    obj = read_weights_file(src)
    _, sd = convert_state_dict(obj, model, fmt)
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{src} does not fit the config's model: {'; '.join(bad[:5])}; fix the config (num_classes, depth)")
    result = model.load_state_dict(sd, strict=False)
    meta = obj.get("dataset_meta")
    if meta is None:
        try:
            meta = coco_dataset_meta(num_classes)
        except ValueError:
            meta = None
    out = {"format": "detres", "model": model.state_dict(), "dataset_meta": meta, "converted_from": fmt}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return result
