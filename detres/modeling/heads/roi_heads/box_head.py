"""Box heads on pooled features, and the class-specific box predictor (Girshick 2015; Wu et al. 2019)."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detres.modeling.backbones.norm import make_norm
from detres.registry import HEADS


@HEADS.register()
class ConvFCHead(nn.Module):
    """``len(conv_dims)`` 3x3 conv(+norm)+ReLU, flatten, ``len(fc_dims)`` FC+ReLU.

    ``conv_dims=[], fc_dims=[1024, 1024]`` is the 2-FC head of both references; ``conv_dims=[256]*4,
    fc_dims=[1024]`` with ``norm`` is the "4conv1fc" head (torchvision v2 uses ``bn``, detectron2 ``gn``).
    Input [N, C, R, R] -> [N, fc_dims[-1]] (or the flattened conv output when ``fc_dims`` is empty);
    the flatten is in (C, R, R) order, the first FC's column order in every checkpoint.
    ``channels`` (C) and ``resolution`` (R) are injected by the ROI heads from the input shape and the
    pooler's ``output_size``; ``out_dim`` is the feature size the predictor is built for.
    """

    def __init__(self, channels: int, resolution: int, conv_dims: Sequence[int] = (), fc_dims: Sequence[int] = (1024, 1024), norm: str = "") -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for d in conv_dims:
            layers: list[nn.Module] = [nn.Conv2d(channels, d, 3, padding=1, bias=norm in ("", "none"))]
            if norm not in ("", "none"):
                layers.append(make_norm(norm, d))
            self.convs.append(nn.Sequential(*layers))
            channels = d
        self.fcs = nn.ModuleList()
        dim = channels * resolution * resolution
        for d in fc_dims:
            self.fcs.append(nn.Linear(dim, d))
            dim = d
        self.out_dim = dim
        self.flat_shape = (channels, resolution, resolution)  # (C, R, R) seen by the flatten
        for m in self.modules():  # detectron2's init: MSRA fill for convs, Xavier for FCs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return x


@HEADS.register()
class BoxPredictor(nn.Module):
    """Class logits [N, K+1] (background at index K) and box deltas [N, 4K] (class-specific) or [N, 4].

    ``in_dim`` (the box head's ``out_dim``) and ``num_classes`` (K) are injected by the ROI heads.
    """

    def __init__(self, in_dim: int, num_classes: int, cls_agnostic: bool = False) -> None:
        super().__init__()
        self.cls_agnostic = cls_agnostic
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4 if cls_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0)
        nn.init.constant_(self.bbox_pred.bias, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
