"""Image decoding with errors that name the file and image id (OpenCV, RGB out)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

# Decode in the calling thread: loader workers give the parallelism, and OpenCV's own thread
# pool would oversubscribe the cores they share.
cv2.setNumThreads(1)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class ImageReadError(RuntimeError):
    """An image that cannot be read: missing, truncated, undecodable or of the wrong size."""


def is_truncated_jpeg(data: bytes) -> bool:
    """True for JPEG bytes with no end-of-image marker near the end (a cut-off download)."""
    if not data.startswith(_JPEG_SOI):
        return False
    return _JPEG_EOI not in data[-1024:]


def read_image(path: str | os.PathLike, image_id: int | str | None = None,
               expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` into an [H, W, 3] uint8 RGB array.

    EXIF orientation is ignored, as in pycocotools / PIL, so pixels match the json's width and
    height. Raises ImageReadError naming the file and ``image_id`` when the file is missing,
    truncated, undecodable, or when its (h, w) differs from ``expected_size``.
    """
    where = f"image {path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{where}: file not found. Check image_root / file_name in the annotations.") from None
    except OSError as e:
        raise ImageReadError(f"{where}: cannot read: {e}") from None
    if is_truncated_jpeg(data):
        raise ImageReadError(f"{where}: truncated JPEG (no end-of-image marker); re-download or remove it "
                             "(tools/check_dataset.py lists every such file).")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageReadError(f"{where}: not a decodable image ({len(data)} bytes).")
    if expected_size is not None and tuple(img.shape[:2]) != tuple(expected_size):
        raise ImageReadError(
            f"{where}: decoded size (h, w) = {img.shape[:2]} but the annotations say {tuple(expected_size)}; "
            "fix the json's height/width or the image."
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(h, w) of an image file from its header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return h, w
