"""Any torchvision classification model as a backbone, its strides probed once at build time."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from detres.checkpoint import load_backbone_weights
from detres.modeling.backbones.base import Backbone
from detres.registry import BACKBONES
from detres.structures import ShapeSpec


def _feature_trunk(model: nn.Module) -> nn.Module:
    # ResNet-like models are a flat sequence of stem + layer1..4; others keep their trunk in `.features`.
    if hasattr(model, "layer4"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return nn.Sequential(*[getattr(model, n) for n in names])
    if hasattr(model, "features"):
        return model.features
    raise ValueError(f"{type(model).__name__}: no `layer4` or `features` trunk; wrap it as your own backbone module")


@BACKBONES.register()
class TorchvisionBackbone(Backbone):
    """A ``torchvision.models`` classifier's trunk, returning the last block of each stride.

    Args:
        name: a torchvision model name (``resnet50``, ``mobilenet_v3_large``, ``convnext_tiny``...).
        num_levels: how many of the coarsest strides to return (default 4).
        weights: local torchvision weights for the whole classifier, read by
            ``detres.checkpoint.load_backbone_weights``; nothing is downloaded.
    """

    moved_keys: ClassVar[dict[str, str]] = {"weights_path": "weights"}

    def __init__(self, name: str, num_levels: int = 4, weights: str | None = None) -> None:
        super().__init__()
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        if weights:
            load_backbone_weights(model, weights)
        self.trunk = _feature_trunk(model)
        # Probe: the last child of each stride is that level's output.
        x = torch.zeros(1, 3, 256, 256)
        last_of_stride: dict[int, tuple[int, int]] = {}
        with torch.no_grad():
            was_training = self.trunk.training
            self.trunk.eval()
            for i, child in enumerate(self.trunk):
                x = child(x)
                last_of_stride[256 // x.shape[-1]] = (i, x.shape[1])
            self.trunk.train(was_training)
        strides = sorted(last_of_stride)[-num_levels:]
        self._taps = {last_of_stride[s][0]: f"res{int(math.log2(s))}" for s in strides}
        self._shapes = {f"res{int(math.log2(s))}": ShapeSpec(last_of_stride[s][1], s) for s in strides}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """One ShapeSpec per returned stride."""
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"res{k}": feature}."""
        out: dict[str, Tensor] = {}
        last = max(self._taps)
        for i, child in enumerate(self.trunk):
            x = child(x)
            if i in self._taps:
                out[self._taps[i]] = x
            if i == last:
                break
        return out
