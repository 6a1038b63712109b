"""``Predictor``: load a config and weights once, then detect on paths, numpy arrays or PIL images."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from detres.data.io import read_image

ImageInput = Any  # str | os.PathLike | np.ndarray (HxWx3 RGB uint8) | PIL.Image.Image | torch.Tensor [3,H,W]


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB from an image file, decoded as training decodes it (``detres.data.io.read_image``):
    a missing, truncated or undecodable file raises ``ImageReadError`` naming it."""
    return read_image(path)


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any supported input as an HxWx3 uint8 RGB array."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be [3, H, W] RGB, got {tuple(image.shape)}")
        return image.permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.array(image.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)
    arr = np.asarray(image)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. np.frombuffer, mmap)
        arr = arr.copy()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"numpy images must be HxWx3 RGB, got shape {arr.shape}")
    return arr.astype(np.uint8, copy=False)


class Predictor:
    """Inference with one model, loaded once.

    >>> p = Predictor("configs/examples/shapes_faster_rcnn.yaml", "output/model_final.pth")
    >>> dets = p(["a.jpg", np_image])  # list of {"boxes", "scores", "labels", "class_names"}

    ``optimize`` (default True) applies ``detres.runtime.optimize(model, backend="cpu")`` once the
    weights are loaded (folded BN, NHWC, oneDNN / NNPACK kernels, the row-gather RoIAlign: the same
    detections within each pass's tolerance); ``optimize=False`` keeps the reference model as built
    (e.g. to train it further or save it).
    """

    def __init__(
        self,
        config: str | os.PathLike | DictConfig,
        weights: str | os.PathLike | None = None,
        *,
        overrides: Sequence[str] = (),
        device: str | None = None,
        score_thresh: float = 0.0,
        batch_size: int = 4,
        optimize: bool = True,
    ) -> None:
        from detres import build_model, load_checkpoint, load_config
        from detres.runtime import optimize as optimize_model

        self.cfg = config if isinstance(config, DictConfig) else load_config(config, list(overrides))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build_model(self.cfg).to(self.device).eval()
        meta: dict[str, Any] = {}
        if weights:
            report = load_checkpoint(self.model, weights, use_ema=True)
            meta = report.meta.get("dataset_meta") or {}
        names = meta.get("class_names") if isinstance(meta, dict) else None
        cfg_names = self.cfg.get("class_names", None)
        self.class_names: list[str] | None = list(names or cfg_names or []) or None
        self.score_thresh = score_thresh
        self.batch_size = batch_size
        if optimize:
            optimize_model(self.model, backend="cpu")

    @torch.inference_mode()
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Detections per image: boxes [N,4] xyxy pixels, scores [N], labels [N], class_names."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = [to_rgb_array(x) for x in items[start:start + self.batch_size]]
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in chunk]
            for det in self.model(tensors):
                keep = det["scores"] >= self.score_thresh
                boxes, scores, labels = (det[k][keep].cpu().numpy() for k in ("boxes", "scores", "labels"))
                names = [self.class_names[int(lab)] if self.class_names and lab < len(self.class_names) else str(int(lab)) for lab in labels]
                out.append({"boxes": boxes, "scores": scores, "labels": labels, "class_names": names})
        return out
