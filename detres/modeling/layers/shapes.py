"""Reading a head's input levels out of a neck's ``output_shape()``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from detres.structures import ShapeSpec


def level_shapes(input_shape: Mapping[str, ShapeSpec], in_features: Sequence[str], where: str) -> tuple[list[int], int]:
    """(strides per level, the one channel count) of ``in_features``; ``where`` names the config node
    (e.g. ``model.rpn``) in the errors."""
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(f"{where}.in_features {missing} are not neck outputs {list(input_shape)}; pick from those")
    chans = {input_shape[f].channels for f in in_features}
    if len(chans) != 1:
        raise ValueError(f"{where}.in_features must share one channel count, got {sorted(chans)}")
    return [input_shape[f].stride for f in in_features], chans.pop()
