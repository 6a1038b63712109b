"""DINO detector (Zhang et al. 2023): backbone -> ChannelMapper over several levels (+ an extra
stride-2 level) -> DINOHead. In training the head adds contrastive denoising queries built from the
targets; at test time the best (query, class) sigmoid scores per image."""
from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F

from detres.modeling.detectors.base import GraphSpec, TracedCall
from detres.modeling.detectors.deformable_detr import _DIMS, DeformableDETR
from detres.modeling.layers.denoising import DenoisingQueries
from detres.registry import DETECTORS
from detres.structures import ImageBatch


@DETECTORS.register()
class DINO(DeformableDETR):
    """DETR with improved denoising anchor boxes; children as ``DETR`` (backbone, neck, head, input)."""

    @classmethod
    def from_config(cls, **kwargs: Any) -> "DINO":
        """Backbone, then neck on its shapes, then the head on the neck's shapes (see ``DETR``)."""
        return super().from_config(**kwargs)

    def dense(self, x: Tensor, pad_mask: Tensor, select_indices: Tensor | None = None,
              dn: DenoisingQueries | None = None) -> tuple[Tensor, ...]:
        """x [B, 3, H, W] normalized, pad_mask [B, H, W] bool (True = padding) -> the head's
        ``forward_layers`` tensors: the whole network, traceable (without denoising queries)."""
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        levels = list(feats.values())
        masks = [F.interpolate(pad_mask[None].float(), size=f.shape[-2:]).bool()[0] for f in levels]
        return self.head.forward_layers(levels, masks, select_indices, dn)

    def graphs(self) -> dict[str, GraphSpec]:
        """``dense``: (images, pad_mask) -> every decoder layer's logits and boxes, the selected
        proposals' logits, boxes and grid boxes, and their token indices."""
        names = ["layer_logits", "layer_boxes", "enc_logits", "enc_boxes", "enc_proposals", "topk_indices"]
        # as Deformable DETR: any padded size above the coarsest stride (a one-pixel level would specialize)
        shapes = (self.neck if self.neck is not None else self.backbone).output_shape().values()
        low = max(s.stride for s in shapes) + 1
        return {"dense": GraphSpec(TracedCall(self, self.dense), ["images", "pad_mask"], names, _DIMS,
                                   checked=names[:-1], selection="topk_indices", min_sizes={"height": low, "width": low})}

    def forward_raw(self, batch: ImageBatch, select_indices: Tensor | None = None,
                    dn: DenoisingQueries | None = None) -> dict[str, Any]:
        """"pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4] normalized cxcywh, "aux_outputs",
        "interm_outputs", "interm_outputs_for_matching_pre", "dn_meta" (the reference's keys; see
        ``DINOHead.outputs``). ``select_indices`` [B, Q]: use these encoder tokens as the queries'
        proposals, in this order, instead of the top-scoring ones. ``dn``: denoising queries (training)."""
        if select_indices is None and dn is None:
            out = self.run_graph("dense", self.dense, batch.tensor, batch.pad_mask)
        else:
            out = self.dense(batch.tensor, batch.pad_mask, select_indices, dn)
        return self.head.outputs(*out, dn=dn)

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted loss terms of the matching queries (last layer, ``_i`` aux layers, ``_interm``)
        and of the denoising queries (``_dn`` suffixes), plus logged metrics.

        targets: per image "boxes" [N, 4] absolute xyxy in that image's pixels, "labels" [N] 0..K-1.
        """
        if len(targets) != len(batch):
            raise ValueError(f"{type(self).__name__}.losses: {len(batch)} images but {len(targets)} targets")
        norm = self.normalized_targets(batch, targets)
        dn = self.head.denoising(norm, self.head.num_queries) if self.head.denoising is not None else None
        return self.head.losses(self.forward_raw(batch, dn=dn), norm)
