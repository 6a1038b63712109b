"""Datasets, transforms, samplers and loaders; importing this fills DATASETS and TRANSFORMS."""
from __future__ import annotations

from detres.data import transforms  # noqa: F401  (registers the transforms)
from detres.data.base import BoxStats, DetectionDataset
from detres.data.coco import CocoDetection, datasets_root, load_coco_json, resolve_path
from detres.data.io import ImageReadError, read_image
from detres.data.loader import (
    TestLoader, TrainLoader, build_dataset, build_test_loader, build_train_loader, build_transforms,
    infer_num_classes,
)
from detres.data.meta import DatasetMeta
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler
from detres.data.voc import VocDetection
from detres.data.yolo import YoloDetection

__all__ = [
    "DatasetMeta", "DetectionDataset", "CocoDetection", "VocDetection", "YoloDetection", "BoxStats",
    "ImageReadError", "read_image", "build_dataset", "build_transforms", "build_train_loader",
    "build_test_loader", "infer_num_classes", "TrainLoader", "TestLoader", "TrainingSampler",
    "GroupedBatchSampler", "InferenceSampler", "datasets_root", "resolve_path", "load_coco_json",
]
