"""The backbone contract: ``forward(x) -> dict[str, Tensor]``, ``output_shape()`` and ``size_divisibility``."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

from torch import Tensor, nn

from detres.structures import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """Base class of detres backbones.

    ``forward`` maps an image batch [B, 3, H, W] to named feature maps, ``res{k}`` for stride 2^k;
    ``output_shape()`` gives each one's channels and stride, so necks and heads are built from it and
    no config writes a channel count. ``size_divisibility`` is the multiple that input H and W are
    padded to.

    A user's backbone need not subclass this: ``build_model`` accepts any module with ``forward`` and
    ``output_shape``. ``moved_keys`` maps a constructor argument that was renamed to its new key path
    (relative to the backbone's config node); calling the constructor with the old name raises a
    TypeError naming the new one, and config validation reads the same table.
    """

    moved_keys: ClassVar[dict[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Backbone:
        moved = [k for k in kwargs if k in cls.moved_keys]
        if moved:
            raise TypeError(f"{cls.__name__}: " + "; ".join(f"'{k}' moved to '{cls.moved_keys[k]}'" for k in moved))
        return super().__new__(cls)

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] normalized images -> {name: [B, C, H / stride, W / stride]}."""

    @abstractmethod
    def output_shape(self) -> dict[str, ShapeSpec]:
        """{name: ShapeSpec(channels, stride)} of every feature ``forward`` returns."""

    @property
    def size_divisibility(self) -> int:
        """Pad inputs to a multiple of this: by default the largest output stride."""
        return max((s.stride for s in self.output_shape().values()), default=1)
