"""RT-DETR detector (Zhao et al. 2024): backbone (ResNet-vd) -> HybridEncoder neck (AIFI + CCFF) ->
RTDETRHead (IoU-aware query selection, deformable decoder). Fixed-size input (``input.fixed_size_test``),
the best (query, class) sigmoid scores per image at test time."""
from __future__ import annotations

from typing import Any

from detres.modeling.detectors.base import GraphSpec, TracedCall
from detres.modeling.detectors.deformable_detr import _DIMS
from detres.modeling.detectors.dino import DINO
from detres.registry import DETECTORS


@DETECTORS.register()
class RTDETR(DINO):
    """Real-time DETR; children as ``DETR`` (backbone, neck = ``HybridEncoder``, head, input). The
    pipeline is DINO's (``dense``, ``forward_raw`` with ``select_indices`` / denoising queries, ``losses``);
    the head's outputs are keyed as the official RT-DETR (``aux_outputs``, ``enc_aux_outputs``,
    ``enc_meta``, and in training ``dn_aux_outputs``, ``dn_meta``)."""

    @classmethod
    def from_config(cls, **kwargs: Any) -> "RTDETR":
        """Backbone, then neck on its shapes, then the head on the neck's shapes (see ``DETR``)."""
        return super().from_config(**kwargs)

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
                                   checked=names[:-1], selection="topk_indices",
                                   min_sizes={"height": stride + 1, "width": stride + 1})}
