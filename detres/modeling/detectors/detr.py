"""DETR detector (Carion et al. 2020): backbone -> ChannelMapper (the reference's ``input_proj``) ->
DETRHead, with set-prediction training and one detection per query at test time."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from detres.modeling.build import build_backbone_and_neck
from detres.modeling.detectors.base import Detector, GraphSpec, InputConfig, TracedCall
from detres.registry import DETECTORS, instantiate
from detres.structures import ImageBatch
from detres.structures.boxes import normalize_boxes, xyxy_to_cxcywh


@DETECTORS.register()
class DETR(Detector):
    """End-to-end set prediction with a transformer; no anchors, no NMS.

    Args:
        backbone: module returning {name: [B, C, H, W]}.
        neck: module projecting the backbone level to ``head``'s width (``ChannelMapper``), or None.
        head: a ``DETRHead``.
        input: the ``input:`` block (normalization, test resize, padding policy).
        test_topk: 0 = one detection per query, best non-no-object class (the reference); k > 0 = the k
            best (query, class) pairs per image.
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module | None, head: nn.Module,
        input: InputConfig | None = None, test_topk: int = 0,
    ) -> None:
        super().__init__(input)
        self.backbone, self.neck, self.head = backbone, neck, head
        self.test_topk = test_topk

    @classmethod
    def from_config(
        cls, *, input: InputConfig, backbone: Mapping[str, Any], neck: Mapping[str, Any] | None,
        head: Mapping[str, Any], test_topk: int = 0,
    ) -> "DETR":
        """Build from config nodes: backbone, then neck on its shapes, then head on the neck's shapes.

        ``input`` is the model's ``input:`` mapping (keys of ``InputConfig``).
        """
        bb, nk = build_backbone_and_neck(backbone, neck)
        shapes = (nk if nk is not None else bb).output_shape()
        hd = instantiate(head, input_shape=shapes)
        inp = InputConfig(**input) if isinstance(input, Mapping) else input
        return cls(bb, nk, hd, inp, test_topk)

    def dense(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, 3, H, W] normalized, pad_mask [B, H, W] bool (True = padding) -> class logits
        [L, B, Q, K+1] and normalized cxcywh boxes [L, B, Q, 4] of every decoder layer: the whole
        network, traceable."""
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        f = feats[self.head.in_feature]
        # The reference's nearest-mode downsampling of the pixel mask (no align_corners, default scale).
        mask = F.interpolate(pad_mask[None].float(), size=f.shape[-2:]).bool()[0]
        return self.head.forward_layers(f, mask)

    def graphs(self) -> dict[str, GraphSpec]:
        """``dense``: (images, pad_mask) -> every decoder layer's logits and boxes."""
        dims = {"images": {0: ("batch", 1), 2: ("height", 32), 3: ("width", 32)},
                "pad_mask": {0: ("batch", 1), 1: ("height", 32), 2: ("width", 32)}}
        return {"dense": GraphSpec(TracedCall(self, self.dense), ["images", "pad_mask"], ["layer_logits", "layer_boxes"], dims)}

    def forward_raw(self, batch: ImageBatch) -> dict[str, Any]:
        """"pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4] normalized cxcywh (relative to each image's
        unpadded size), "aux_outputs" (per earlier decoder layer, when the head has aux_loss)."""
        logits, boxes = self.run_graph("dense", self.dense, batch.tensor, batch.pad_mask)
        return self.head.outputs(logits, boxes)

    def normalized_targets(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Targets with "boxes" [N, 4] absolute xyxy in each image's pixels -> normalized cxcywh by its
        unpadded size; crowd boxes (``iscrowd``) are dropped, as the reference's data pipeline does."""
        out = []
        for t, size in zip(targets, batch.image_sizes):
            boxes, labels = t["boxes"], t["labels"]
            if "iscrowd" in t and t["iscrowd"] is not None:
                keep = ~t["iscrowd"].bool()
                boxes, labels = boxes[keep], labels[keep]
            if len(labels) and (labels.min() < 0 or labels.max() >= self.head.num_classes):
                raise ValueError(
                    f"DETR targets: labels must lie in 0..{self.head.num_classes - 1}, got "
                    f"{labels.min().item()}..{labels.max().item()}; check num_classes against the dataset"
                )
            out.append({"labels": labels, "boxes": normalize_boxes(xyxy_to_cxcywh(boxes.float()), size)})
        return out

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted loss terms (loss_ce, loss_bbox, loss_giou and their per-layer ``_i`` copies), plus
        the last layer's ``class_error`` and ``cardinality_error`` metrics (logged, not summed).

        targets: per image "boxes" [N, 4] absolute xyxy in that image's pixels, "labels" [N] 0..K-1.
        """
        if len(targets) != len(batch):
            raise ValueError(f"DETR.losses: {len(batch)} images but {len(targets)} targets")
        return self.head.losses(self.forward_raw(batch), self.normalized_targets(batch, targets))

    def postprocess(
        self, raw: dict[str, Any], batch: ImageBatch, orig_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """{"boxes" [N, 4] xyxy in ``orig_sizes`` pixels, "scores" [N], "labels" [N] 0..K-1} per image.

        The normalized boxes are relative to each image's unpadded extent, so scaling by the original
        size undoes the test-time resize at once (the reference's PostProcess).
        """
        return self.head.inference(raw, list(orig_sizes), self.test_topk)
