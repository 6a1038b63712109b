"""Plain data structures shared by every part: shapes, batches, boxes, samples."""
from __future__ import annotations

from detres.structures.image_batch import ImageBatch
from detres.structures.instances import Instances, Sample
from detres.structures.shape_spec import ShapeSpec

__all__ = ["ShapeSpec", "ImageBatch", "Instances", "Sample"]
