"""Photometric transforms (boxes unchanged)."""
from __future__ import annotations

import cv2
import numpy as np

from detres.data.transforms.base import DetData
from detres.registry import TRANSFORMS


@TRANSFORMS.register()
class ColorJitter:
    """Random brightness, contrast, saturation (factors in [1-x, 1+x]) and hue shift (in [-hue, hue]
    of a full turn, hue <= 0.5), applied in a random order, as torchvision's ColorJitter."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter.hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = map(float, (brightness, contrast, saturation, hue))

    def __call__(self, data: DetData, rng: np.random.Generator) -> DetData:
        img = data.image.astype(np.float32)
        for op in rng.permutation(4):
            if op == 0 and self.brightness > 0:
                img *= rng.uniform(1 - self.brightness, 1 + self.brightness)
            elif op == 1 and self.contrast > 0:
                f = rng.uniform(1 - self.contrast, 1 + self.contrast)
                mean = float(cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).mean())
                img = (img - mean) * f + mean
            elif op == 2 and self.saturation > 0:
                f = rng.uniform(1 - self.saturation, 1 + self.saturation)
                gray = cv2.cvtColor(np.clip(img, 0, 255), cv2.COLOR_RGB2GRAY)[..., None]
                img = (img - gray) * f + gray
            elif op == 3 and self.hue > 0:
                shift = rng.uniform(-self.hue, self.hue)
                hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(shift * 256))) % 256
                img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        return DetData(np.clip(img, 0, 255).astype(np.uint8), data.boxes, data.labels, data.iscrowd)

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation}, {self.hue})"
