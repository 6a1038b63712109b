"""Deformable DETR detector (Zhu et al. 2021): backbone -> ChannelMapper over several levels (+ an
extra stride-2 level: the reference's ``input_proj``) -> DeformableDETRHead; sigmoid scores, the best
(query, class) pairs per image at test time."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from detres.modeling.detectors.base import GraphSpec, InputConfig, TracedCall
from detres.modeling.detectors.detr import DETR
from detres.registry import DETECTORS
from detres.structures import ImageBatch

_DIMS = {"images": {0: ("batch", 1), 2: ("height", 1), 3: ("width", 1)},
         "pad_mask": {0: ("batch", 1), 1: ("height", 1), 2: ("width", 1)}}


@DETECTORS.register()
class DeformableDETR(DETR):
    """Set prediction with multi-scale deformable attention; no anchors, no NMS.

    Same children as ``DETR`` (backbone, neck, head, input); the head reads every neck level.
    ``test_topk``: detections kept per image are the head's ``test_topk`` best (query, class) pairs.
    """

    @classmethod
    def from_config(
        cls, *, input: InputConfig, backbone: Mapping[str, Any], neck: Mapping[str, Any] | None,
        head: Mapping[str, Any], test_topk: int = 0,
    ) -> "DeformableDETR":
        """Backbone, then neck on its shapes, then the head on the neck's shapes (see ``DETR``)."""
        if test_topk:
            raise ValueError("DeformableDETR: set the number of detections as model.head.test_topk")
        return super().from_config(input=input, backbone=backbone, neck=neck, head=head)

    def dense(self, x: Tensor, pad_mask: Tensor, select_indices: Tensor | None = None) -> tuple[Tensor, ...]:
        """x [B, 3, H, W] normalized, pad_mask [B, H, W] bool (True = padding) -> the head's
        ``forward_layers`` tensors (every decoder layer's logits and boxes; two-stage: the encoder
        proposals' logits, boxes and the selected indices): the whole network, traceable."""
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        levels = list(feats.values())
        # the reference's nearest-mode downsampling of the pixel mask, for every level
        masks = [F.interpolate(pad_mask[None].float(), size=f.shape[-2:]).bool()[0] for f in levels]
        return self.head.forward_layers(levels, masks, select_indices)

    def graphs(self) -> dict[str, GraphSpec]:
        """``dense``: (images, pad_mask) -> every decoder layer's logits and boxes (+ the two-stage
        encoder outputs and selected indices)."""
        names = ["layer_logits", "layer_boxes"]
        if self.head.two_stage:
            names += ["enc_logits", "enc_boxes", "topk_indices"]
        # Any padded size (size_divisibility 1) larger than the coarsest stride: below it the
        # coarsest level is one pixel and torch.export would specialize on that.
        shapes = (self.neck if self.neck is not None else self.backbone).output_shape().values()
        low = max(s.stride for s in shapes) + 1
        return {"dense": GraphSpec(TracedCall(self, self.dense), ["images", "pad_mask"], names, _DIMS,
                                   checked=[n for n in names if n != "topk_indices"],
                                   selection="topk_indices" if self.head.two_stage else None,
                                   min_sizes={"height": low, "width": low})}

    def forward_raw(self, batch: ImageBatch, select_indices: Tensor | None = None) -> dict[str, Any]:
        """"pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4] normalized cxcywh (relative to each image's
        unpadded size), "aux_outputs" (earlier decoder layers), two-stage: "enc_outputs" (proposal logits
        [B, S, K] and boxes [B, S, 4]). ``select_indices`` [B, Q]: use these encoder tokens as the
        two-stage queries instead of the top-scoring ones."""
        if select_indices is not None:
            if not self.head.two_stage:
                raise ValueError("DeformableDETR.forward_raw: select_indices needs a two-stage model")
            out = self.dense(batch.tensor, batch.pad_mask, select_indices)
        else:
            out = self.run_graph("dense", self.dense, batch.tensor, batch.pad_mask)
        return self.head.outputs(*out)

    def postprocess(
        self, raw: dict[str, Any], batch: ImageBatch, orig_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """{"boxes" [N, 4] xyxy in ``orig_sizes`` pixels, "scores" [N], "labels" [N] 0..K-1} per image,
        N = the head's ``test_topk`` (the reference's PostProcess)."""
        return self.head.inference(raw, list(orig_sizes))
