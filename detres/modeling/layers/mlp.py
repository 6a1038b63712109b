"""A small multi-layer perceptron: DETR's box FFN, shared by the DETR family's box heads."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from detres.registry import LAYERS


@LAYERS.register()
class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    Parameters are ``layers.{i}.weight`` / ``layers.{i}.bias``, as the reference DETR names them.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x
