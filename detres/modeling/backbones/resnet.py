"""ResNet-18/34/50/101/152 (He et al. 2016) with torchvision's module names, and ResNet-vd.

torchvision and timm ResNet state dicts load without renaming. Detection mode returns the stage
outputs ``res2..res5`` (strides 4..32); classifier mode (``num_classes`` set) adds global pooling + fc
and ``forward`` returns logits, for ImageNet-style classification and transfer learning.

``variant="d"`` is ResNet-D ("Bag of Tricks", He et al. 2019, Sec. 4.1; the backbone of RT-DETR): a
stem of three 3x3 convs (32, 32, 64 channels) and projection shortcuts that average-pool 2x2 before a
stride-1 1x1 conv, with timm's ``resnet*d`` module names (``conv1`` a Sequential, ``downsample`` =
(pool or Identity, conv, norm)). Official RT-DETR ``PResNet`` weights load after
``detres.checkpoint.presnet.convert_presnet`` (with ``first_block_projection=True``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detres.checkpoint import load_backbone_weights
from detres.modeling.backbones.base import Backbone
from detres.modeling.backbones.norm import freeze_module, make_norm, to_frozen_bn
from detres.registry import BACKBONES
from detres.structures import ShapeSpec

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _projection(cin: int, cout: int, stride: int, norm: str, variant: str) -> nn.Sequential:
    """The projection shortcut: variant b a strided 1x1 conv + norm (torchvision); variant d a 2x2
    average pool (Identity at stride 1) then a stride-1 1x1 conv + norm (ResNet-D, timm's names).

    The pool uses ``ceil_mode=True`` so odd sizes give the same map size as the strided 3x3 branch;
    ``count_include_pad=False`` as timm. With no padding, PyTorch divides a window cut by the border
    by its in-image size either way, so this equals PResNet's ``AvgPool2d(2, 2, 0, ceil_mode=True)``
    (count_include_pad True) exactly, odd sizes included (tests/modeling/test_resnet_vd.py checks it).
    """
    if variant == "b":
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), make_norm(norm, cout))
    pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, cin: int, planes: int, stride: int, dilation: int, norm: str, stride_in_1x1: bool,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: saves allocating a full feature map (the conv output is not needed again)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 block; the stride sits on the 3x3 (torchvision) or the 1x1 (caffe/MSRA)."""

    expansion = 4

    def __init__(
        self, cin: int, planes: int, stride: int, dilation: int, norm: str, stride_in_1x1: bool,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        cout = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=s1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, s3, dilation)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = make_norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: saves allocating a full feature map (the conv output is not needed again)
        return self.relu(out)


@BACKBONES.register()
class ResNet(Backbone):
    """ResNet backbone / classifier.

    Args:
        depth: 18, 34, 50, 101 or 152.
        out_features: stage names to return, from ``res2..res5``.
        norm: ``bn``, ``frozen_bn``, ``syncbn`` or ``gn``. Default (None): ``bn`` for a classifier
            (``num_classes`` set: it trains its BN statistics), ``frozen_bn`` for a detection backbone.
        freeze_at: 0 freezes nothing, 1 the stem, k the stem and stages res2..res_k.
        dilation: dilation of res5 (2 = DC5: res5 keeps stride 16).
        dilation_style: ``torchvision`` (the first res5 block keeps dilation 1, as torchvision's
            ``replace_stride_with_dilation`` and official DETR-DC5) or ``detectron2`` (every res5 block dilated).
        stride_in_1x1: put the stride of bottleneck blocks on the 1x1 conv (detectron2's MSRA weights).
        num_classes: classifier mode: global average pool + ``fc`` with this many outputs.
        weights: local path of torchvision / timm / detres ResNet weights (or official RT-DETR
            ``PResNet`` ones), read by ``detres.checkpoint.load_backbone_weights``; nothing is downloaded.
        variant: ``b`` (torchvision: 7x7 stem, strided 1x1 projections) or ``d`` (ResNet-vd: 3-conv
            3x3 stem 32-32-64, 2x2 average pool before a stride-1 1x1 projection; timm's
            ``resnet*d``). In a dilated res5 (``dilation=2``) the stride-1 projection does not pool.
        first_block_projection: give the first block of every stage a 1x1 projection shortcut even
            where shapes match (res2 of depth 18/34: 64 -> 64, no pooling), as the official RT-DETR
            ``PResNet``; False (torchvision, timm) keeps the identity there.
    """

    def __init__(
        self,
        depth: int = 50,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        norm: str | None = None,
        freeze_at: int = 0,
        dilation: int = 1,
        stride_in_1x1: bool = False,
        num_classes: int | None = None,
        weights: str | None = None,
        dilation_style: str = "torchvision",
        variant: str = "b",
        first_block_projection: bool = False,
    ) -> None:
        super().__init__()
        if depth not in STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}, got {depth}")
        bad = [f for f in out_features if f not in ("res2", "res3", "res4", "res5")]
        if bad:
            raise ValueError(f"ResNet out_features {bad} not in res2..res5")
        if dilation not in (1, 2):
            raise ValueError(f"ResNet dilation must be 1 or 2, got {dilation}")
        if dilation_style not in ("torchvision", "detectron2"):
            raise ValueError(f"ResNet dilation_style must be 'torchvision' or 'detectron2', got {dilation_style!r}")
        if variant not in ("b", "d"):
            raise ValueError(f"ResNet variant must be 'b' (torchvision) or 'd' (ResNet-vd), got {variant!r}")
        if norm is None:
            norm = "bn" if num_classes is not None else "frozen_bn"
        block = BasicBlock if depth < 50 else Bottleneck
        self.depth, self.out_features, self.num_classes = depth, list(out_features), num_classes
        self.variant, self.first_block_projection = variant, first_block_projection
        self.conv1 = self._stem(variant, norm)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, self._shapes = 64, {}
        stride = 4
        for i, n in enumerate(STAGES[depth]):
            planes = 64 * 2**i
            s = 1 if i == 0 else 2
            d = 1
            if i == 3 and dilation == 2:
                s, d = 1, 2
            layers = []
            for j in range(n):
                dj = 1 if (j == 0 and dilation_style == "torchvision") else d
                sj, cout = (s if j == 0 else 1), planes * block.expansion
                project = sj != 1 or cin != cout or (j == 0 and first_block_projection)
                downsample = _projection(cin, cout, sj, norm, variant) if project else None
                layers.append(block(cin, planes, sj, dj, norm, stride_in_1x1, downsample))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            stride *= s
            self._shapes[f"res{i + 2}"] = ShapeSpec(cin, stride)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)
        self._init_weights()
        if weights:
            load_backbone_weights(self, weights)
        self.freeze(freeze_at)

    @staticmethod
    def _stem(variant: str, norm: str) -> nn.Module:
        """``conv1``: the 7x7 stride-2 conv (b) or three 3x3 convs 3->32 (stride 2)->32->64 with norm +
        ReLU between them (d; the last conv's norm is ``bn1``, as timm's ``resnet*d``)."""
        if variant == "b":
            return nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        return nn.Sequential(
            _conv3x3(3, 32, 2), make_norm(norm, 32), nn.ReLU(inplace=True),
            _conv3x3(32, 32), make_norm(norm, 32), nn.ReLU(inplace=True),
            _conv3x3(32, 64),
        )

    def _init_weights(self) -> None:
        # torchvision's init: He (fan_out) convs, unit norms, so random-weight runs behave alike.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and stages res2..res_{freeze_at}."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        self.freeze_at = freeze_at
        if freeze_at >= 1:
            freeze_module(self.conv1)  # variant d: the stem's inner norms too
            self.bn1 = to_frozen_bn(self.bn1)
            for p in self.bn1.parameters():
                p.requires_grad_(False)
        for k in range(2, freeze_at + 1):
            freeze_module(getattr(self, f"layer{k - 1}"))

    @property
    def size_divisibility(self) -> int:
        """32: inputs padded to a multiple of it give exact stride-32 maps (also with res5 dilated or not returned)."""
        return 32

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each returned stage."""
        return {k: self._shapes[k] for k in self.out_features}

    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"res2".."res5": [B, C_k, H/2^k, W/2^k]} for every stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, Tensor] = {}
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out[f"res{i + 2}"] = x
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor] | Tensor:
        """Detection mode: {name: feature} for ``out_features``. Classifier mode: logits [B, num_classes]."""
        feats = self.extract_features(x)
        if self.num_classes is not None:
            return self.fc(torch.flatten(self.avgpool(feats["res5"]), 1))
        return {k: feats[k] for k in self.out_features}
