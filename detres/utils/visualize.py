"""Drawing detections on images with OpenCV."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def color_for(label: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per class (golden-ratio hue steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.0,
) -> np.ndarray:
    """Draw boxes with "name score" captions.

    image: HxWx3 uint8 RGB. boxes: [N, 4] xyxy pixels. Returns a new RGB image.
    """
    out = np.ascontiguousarray(image.copy())
    thick = max(1, round(min(out.shape[:2]) / 300))
    font_scale = max(0.35, min(out.shape[:2]) / 900)
    order = np.argsort(scores)  # draw high scores last, on top
    for i in order:
        if scores[i] < score_thresh:
            continue
        lab = int(labels[i])
        x0, y0, x1, y1 = (int(round(float(v))) for v in boxes[i])
        col = color_for(lab)
        cv2.rectangle(out, (x0, y0), (x1, y1), col, thick)
        name = class_names[lab] if class_names is not None and lab < len(class_names) else str(lab)
        text = f"{name} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = max(y0, th + base + 1)
        cv2.rectangle(out, (x0, ty - th - base - 1), (x0 + tw + 2, ty), col, -1)
        cv2.putText(out, text, (x0 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_rgb(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG/JPEG by extension)."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
