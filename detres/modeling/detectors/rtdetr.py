"""RT-DETR detector (Zhao et al. 2024): backbone (ResNet-vd) -> HybridEncoder neck (AIFI + CCFF) ->
RTDETRHead (IoU-aware query selection, deformable decoder). Fixed-size input (``input.fixed_size_test``),
the best (query, class) sigmoid scores per image at test time."""
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
class RTDETR(DeformableDETR):
    """Real-time DETR; children as ``DETR`` (backbone, neck = ``HybridEncoder``, head, input)."""

    @classmethod
    def from_config(cls, **kwargs: Any) -> "RTDETR":
        """Backbone, then neck on its shapes, then the head on the neck's shapes (see ``DETR``)."""
        return super().from_config(**kwargs)

    def dense(self, x: Tensor, pad_mask: Tensor, select_indices: Tensor | None = None,
              dn: DenoisingQueries | None = None) -> tuple[Tensor, ...]:
        """x [B, 3, H, W], pad_mask [B, H, W] bool (True = padding) -> the head's ``forward_layers``
        tensors: the whole network, traceable (without denoising queries)."""
        levels = list(self.neck(self.backbone(x)).values())
        masks = [F.interpolate(pad_mask[None].float(), size=f.shape[-2:]).bool()[0] for f in levels]
        return self.head.forward_layers(levels, masks, select_indices, dn)

    def graphs(self) -> dict[str, GraphSpec]:
        """``dense``: (images, pad_mask) -> every decoder layer's logits and boxes, the selected
        anchors' logits and boxes, and their indices."""
        names = ["layer_logits", "layer_boxes", "enc_logits", "enc_boxes", "topk_indices"]
        # Padded sizes: multiples of the coarsest stride (the model pads to size_divisibility 32; the
        # ResNet-vd shortcuts' ceil-mode average pools need it for symbolic sizes), above that stride
        # (below it the coarsest level is one pixel and torch.export would specialize on that).
        # RT-DETR's own input is a fixed 640x640.
        stride = max(s.stride for s in self.neck.output_shape().values())
        dims = {name: {i: (sym, stride if sym in ("height", "width") else m) for i, (sym, m) in d.items()}
                for name, d in _DIMS.items()}
        return {"dense": GraphSpec(TracedCall(self, self.dense), ["images", "pad_mask"], names, dims,
                                   checked=names[:-1], min_sizes={"height": stride + 1, "width": stride + 1})}

    def forward_raw(self, batch: ImageBatch, select_indices: Tensor | None = None,
                    dn: DenoisingQueries | None = None) -> dict[str, Any]:
        """The reference's training-mode keys: "pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4]
        normalized cxcywh, "aux_outputs", "enc_aux_outputs", "enc_meta" (+ "dn_aux_outputs",
        "dn_meta" with ``dn``). ``select_indices`` [B, Q]: these encoder anchors, in this order,
        instead of the top-scoring ones."""
        if select_indices is None and dn is None:
            out = self.run_graph("dense", self.dense, batch.tensor, batch.pad_mask)
        else:
            out = self.dense(batch.tensor, batch.pad_mask, select_indices, dn)
        return self.head.outputs(*out, dn=dn)

    def losses(self, batch: ImageBatch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted loss terms of the matching queries (``_aux_i`` layers, ``_enc_0`` anchors) and of
        the denoising queries (``_dn_i``). targets: per image "boxes" [N, 4] absolute xyxy, "labels" [N]."""
        if len(targets) != len(batch):
            raise ValueError(f"RTDETR.losses: {len(batch)} images but {len(targets)} targets")
        norm = self.normalized_targets(batch, targets)
        dn = self.head.denoising(norm, self.head.num_queries) if self.head.denoising is not None else None
        return self.head.losses(self.forward_raw(batch, dn=dn), norm)
