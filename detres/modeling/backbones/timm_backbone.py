"""Any timm model as a backbone: channels and strides come from its ``feature_info``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from detres.checkpoint import load_backbone_weights
from detres.modeling.backbones.base import Backbone
from detres.registry import BACKBONES, close_matches
from detres.structures import ShapeSpec


@BACKBONES.register()
class TimmBackbone(Backbone):
    """``timm.create_model(name, features_only=True)`` wrapped to the backbone contract.

    Args:
        name: a timm model name (``convnext_atto``, ``efficientnet_b0``, ``resnet18d``, ...).
        out_indices: feature levels to return (timm's indices); default: the last four.
        weights: local weights file (timm/torchvision layout), read by
            ``detres.checkpoint.load_backbone_weights``; nothing is downloaded.
        freeze: freeze every parameter (for linear-probe style runs).
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``).

    Outputs are named ``res{k}`` by stride 2^k, so FPN configs read the same for every backbone.
    """

    moved_keys: ClassVar[dict[str, str]] = {"pretrained_path": "weights"}

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] | None = None,
        weights: str | None = None,
        freeze: bool = False,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):  # O(1) lookup; list_models() only to suggest names
            hint = close_matches(name, timm.list_models())
            raise ValueError(f"timm has no model '{name}'" + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                             + " See timm.list_models() for every name.")
        probe = timm.create_model(name, pretrained=False, features_only=True, **(model_kwargs or {}))
        n_levels = len(probe.feature_info)
        indices = tuple(out_indices) if out_indices is not None else tuple(range(max(0, n_levels - 4), n_levels))
        self.model = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=indices, **(model_kwargs or {})
        )
        if weights:
            load_backbone_weights(self.model, weights)
        info = self.model.feature_info
        self.names = [f"res{int(math.log2(r))}" for r in info.reduction()]
        self._shapes = {n: ShapeSpec(c, r) for n, c, r in zip(self.names, info.channels(), info.reduction())}
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """One ShapeSpec per returned level, read from timm's feature_info."""
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"res{k}": feature}."""
        return dict(zip(self.names, self.model(x)))
