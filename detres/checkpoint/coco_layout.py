"""COCO's category layout: 80 contiguous detection classes vs the 91-slot id-indexed layout of
torchvision's detection weights (slot = COCO category id, slot 0 = background)."""
from __future__ import annotations

from typing import Any

#: COCO category id of contiguous label i (the 80 classes ordered by id).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
    88, 89, 90,
)
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: torchvision's detection heads: 91 slots indexed by COCO id (0 = background, 10 unused "N/A" slots).
TORCHVISION_COCO_SLOTS = 91


def coco_label_to_cat_id(num_classes: int) -> list[int]:
    """COCO category id of each detres label for a COCO-converted model.

    80 classes: the contiguous layout (detectron2's, and torchvision's default conversion);
    90 classes: torchvision's slots 1..90 kept as they are (label i = COCO id i + 1);
    91 classes: official DETR's raw layout (label = COCO id).
    """
    if num_classes == TORCHVISION_COCO_SLOTS:
        return list(range(TORCHVISION_COCO_SLOTS))
    if num_classes == len(COCO_CATEGORY_IDS):
        return list(COCO_CATEGORY_IDS)
    if num_classes == TORCHVISION_COCO_SLOTS - 1:
        return list(range(1, TORCHVISION_COCO_SLOTS))
    raise ValueError(
        f"no COCO category layout for num_classes={num_classes}: use 80 (contiguous), 90 (torchvision's slots) or 91 (raw COCO ids)"
    )


def coco_dataset_meta(num_classes: int) -> dict[str, Any]:
    """``{"class_names", "cat_ids"}`` (``DatasetMeta.to_dict()`` layout) for a COCO-converted model."""
    ids = coco_label_to_cat_id(num_classes)
    names = dict(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES))
    return {"class_names": [names.get(i, f"N/A {i}") for i in ids], "cat_ids": ids}
