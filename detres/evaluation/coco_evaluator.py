"""COCOEvaluator: collect model outputs, gather across processes, score with pycocotools semantics."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detres.utils.distributed import all_gather_object, is_main_process
from detres.evaluation.coco_data import detections_from_arrays, ground_truth
from detres.evaluation.scoring import evaluate_results, score  # noqa: F401  (re-exported)
from detres.structures.boxes import scale_boxes, xyxy_to_xywh

logger = logging.getLogger(__name__)


class COCOEvaluator:
    """Bbox COCO evaluator over model outputs.

    ann_file_or_gt: GT json path or dataset dict. dataset_meta: contiguous label -> COCO category id, as an
    object with ``.cat_ids``, or a plain list. Outputs: per image {"boxes" [N,4] xyxy in the input image's
    pixels, "scores" [N], "labels" [N] 0..K-1}.
    """

    def __init__(self, ann_file_or_gt: str | Path | dict, dataset_meta: Any = None, output_dir: str | Path | None = None,
                 backend: str = "auto", max_dets: Sequence[int] = (1, 10, 100), area_ranges=None,
                 pr_curve: bool = False) -> None:
        self.gt = ground_truth(ann_file_or_gt)
        cat_ids = getattr(dataset_meta, "cat_ids", dataset_meta)
        self.cat_ids = np.asarray(list(cat_ids) if cat_ids is not None else self.gt.cat_ids, dtype=np.int64)
        self.output_dir, self.backend, self.max_dets = output_dir, backend, tuple(max_dets)
        self.area_ranges, self.pr_curve = area_ranges, pr_curve
        self.reset()

    def reset(self) -> None:
        """Forget collected predictions."""
        self._chunks: list[np.ndarray] = []

    def process(self, samples: Sequence[Any], outputs: Sequence[dict[str, torch.Tensor]]) -> None:
        """Add one batch: ``samples`` (Sample: image [3,H,W], image_id, orig_size (h,w)) and their outputs."""
        for s, out in zip(samples, outputs):
            boxes = out["boxes"].detach().to("cpu", torch.float64)
            h, w = int(s.image.shape[-2]), int(s.image.shape[-1])
            oh, ow = s.orig_size
            if (h, w) != (int(oh), int(ow)):
                boxes = scale_boxes(boxes, ow / w, oh / h)
            xywh = xyxy_to_xywh(boxes).numpy()
            labels = out["labels"].detach().cpu().numpy().astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.cat_ids)):
                raise ValueError(f"image {s.image_id}: predicted label {labels.max()} outside 0..{len(self.cat_ids) - 1}"
                                 " (dataset_meta.cat_ids has one entry per contiguous label)")
            scores = out["scores"].detach().to("cpu", torch.float64).numpy()
            rows = np.empty((len(labels), 7), dtype=np.float64)
            rows[:, 0], rows[:, 1], rows[:, 2:6], rows[:, 6] = int(s.image_id), self.cat_ids[labels], xywh, scores
            self._chunks.append(rows)

    def _predictions(self) -> np.ndarray:
        local = np.concatenate(self._chunks) if self._chunks else np.zeros((0, 7))
        return np.concatenate(all_gather_object(local))

    def evaluate(self) -> dict[str, Any]:
        """Gather every process' predictions; rank 0 scores and writes files (others return {})."""
        preds = self._predictions()
        if not is_main_process():
            return {}
        dets = detections_from_arrays(preds[:, 0].astype(np.int64), preds[:, 1].astype(np.int64), preds[:, 2:6],
                                      preds[:, 6], self.gt, "<model predictions>")
        if self.output_dir is not None:
            out = Path(self.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            res = [{"image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6].tolist(), "score": float(r[6])}
                   for r in preds]
            (out / "coco_instances_results.json").write_text(json.dumps(res))
        return score(self.gt, dets, backend=self.backend, max_dets=self.max_dets, area_ranges=self.area_ranges,
                     output_dir=self.output_dir, pr_curve=self.pr_curve)
