"""A tiny real detector for engine tests: ResNet-18 (frozen BN) + a pooled conv head that regresses one
box per image and classifies which classes are present. No dropout; losses are means over images, so
accumulation and DDP splits of a batch give the same gradients as the whole batch."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.backbones.resnet import ResNet
from detres.modeling.detectors.base import Detector, InputConfig
from detres.structures import ImageBatch


class TinyDetector(Detector):
    """One box per image. ``random_target``: regress a random GT box (draws from the global torch RNG,
    like RPN/ROI samplers do), so exact resume needs the RNG state restored."""

    def __init__(self, num_classes: int = 3, input: InputConfig | Mapping[str, Any] | None = None,
                 random_target: bool = False, hidden: int = 32) -> None:
        if isinstance(input, Mapping):
            input = InputConfig(**input)
        super().__init__(input)
        self.backbone = ResNet(18, out_features=["res5"], norm="frozen_bn")
        self.head = nn.Sequential(nn.Conv2d(512, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.ReLU())
        self.box = nn.Linear(hidden, 4)
        self.cls = nn.Linear(hidden, num_classes)
        self.num_classes, self.random_target = num_classes, random_target

    def forward_raw(self, batch: ImageBatch) -> dict[str, Tensor]:
        """{"boxes": [B, 4] sigmoid xyxy normalized by the image size, "logits": [B, K]}."""
        h = self.head(self.backbone(batch.tensor)["res5"]).mean((2, 3))
        return {"boxes": torch.sigmoid(self.box(h)), "logits": self.cls(h)}

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """loss_box: L1 to one GT box (normalized); loss_cls: BCE on class presence; both image means."""
        raw = self.forward_raw(batch)
        box_terms, cls_terms = [], []
        for i, t in enumerate(targets):
            h, w = batch.image_sizes[i]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=raw["boxes"].device)
            boxes = t["boxes"][~t["iscrowd"]] if "iscrowd" in t else t["boxes"]
            if len(boxes):
                j = int(torch.randint(len(boxes), (1,))) if self.random_target else 0
                box_terms.append((raw["boxes"][i] - boxes[j] / scale).abs().sum())
            else:
                box_terms.append(raw["boxes"][i].sum() * 0.0)
            present = torch.zeros(self.num_classes, device=raw["logits"].device)
            present[t["labels"]] = 1.0
            cls_terms.append(F.binary_cross_entropy_with_logits(raw["logits"][i], present))
        return {"loss_box": torch.stack(box_terms).mean(), "loss_cls": torch.stack(cls_terms).mean()}

    def postprocess(self, raw: dict[str, Any], batch: ImageBatch, orig_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The one box per image, for every class, scored by class presence, in original pixels."""
        out = []
        for i, (oh, ow) in enumerate(orig_sizes):
            scale = torch.tensor([ow, oh, ow, oh], dtype=torch.float32, device=raw["boxes"].device)
            box = raw["boxes"][i] * scale
            scores = torch.sigmoid(raw["logits"][i])
            out.append({"boxes": box.expand(self.num_classes, 4).clone(), "scores": scores,
                        "labels": torch.arange(self.num_classes, device=scores.device)})
        return out
