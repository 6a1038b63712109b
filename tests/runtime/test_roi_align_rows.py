"""``roi_align_rows`` (RoIAlign as a weighted gather of NHWC rows) against ``torchvision.ops.roi_align``,
and the runtime pooler (``GatherRoIAlign``) against the reference ``MultiScaleRoIAlign``."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from detres.modeling.heads.roi_heads import MultiScaleRoIAlign
from detres.runtime.passes import roi_align_rows as roi_align_rows_pass
from detres.modeling.heads.roi_heads.pooler import GatherRoIAlign
from detres.modeling.layers.roi_align_rows import roi_align_rows


def _rois(n: int, batch: int, size: tuple[int, int], stride: int, g: torch.Generator) -> torch.Tensor:
    """RoIs in input pixels: some inside, some past every edge, some tiny or degenerate."""
    h, w = size[0] * stride, size[1] * stride
    ctr = torch.rand(n, 2, generator=g) * torch.tensor([w * 1.3, h * 1.3]) - torch.tensor([w * 0.15, h * 0.15])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.6
    wh[: n // 8] = 0.3  # smaller than a feature pixel
    idx = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([idx, ctr - wh / 2, ctr + wh / 2], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_torchvision(aligned: bool, sampling_ratio: int, channels_last: bool) -> None:
    g = torch.Generator().manual_seed(sampling_ratio + 3 * aligned)
    feats = torch.randn(2, 8, 13, 19, generator=g)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    rois = _rois(64, 2, (13, 19), 8, g)
    ref = roi_align(feats, rois, 7, 1 / 8, sampling_ratio, aligned)
    got = roi_align_rows(feats, rois, 7, 1 / 8, sampling_ratio, aligned)
    assert got.shape == (64, 7, 7, 8)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), ref, atol=1e-5, rtol=1e-5)
    assert ref.abs().sum() > 0


def test_empty_and_gradient() -> None:
    feats = torch.randn(1, 4, 9, 9, requires_grad=True)
    assert roi_align_rows(feats, torch.zeros(0, 5), 7, 0.25, 2, False).shape == (0, 7, 7, 4)
    rois = torch.tensor([[0.0, 2.0, 3.0, 20.0, 30.0], [0.0, -5.0, 1.0, 9.0, 40.0]])
    roi_align_rows(feats, rois, 5, 0.25, 2, True).square().sum().backward()
    grad = feats.grad.clone()
    feats.grad = None
    roi_align(feats, rois, 5, 0.25, 2, True).square().sum().backward()
    torch.testing.assert_close(grad, feats.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("levels", [1, 4])
def test_row_gather_pooler_equals_reference_pooler(levels: int) -> None:
    """The runtime pooler (the row gather, channels-last output) equals the reference pooler
    (torchvision's kernel) to float rounding, and the pass puts it in the reference's place."""
    g = torch.Generator().manual_seed(levels)
    strides = [2**k for k in range(2, 2 + levels)]
    feats = [torch.randn(2, 8, 128 // s, 96 // s, generator=g) for s in strides]
    boxes = [_rois(40, 1, (32, 24), 4, g)[:, 1:], _rois(25, 1, (32, 24), 4, g)[:, 1:]]
    pooler = MultiScaleRoIAlign(strides, 7, 2, False, "torchvision")
    ref = pooler(feats, boxes)
    holder = torch.nn.ModuleDict({"pool": pooler})
    assert roi_align_rows_pass(holder) == 1 and type(holder["pool"]) is GatherRoIAlign
    runtime = holder["pool"]
    assert (runtime.output_size, runtime.scales, runtime.sampling_ratio) == (7, pooler.scales, 2)
    got = runtime(feats, boxes)
    assert got.shape == ref.shape == (65, 8, 7, 7)
    assert got.is_contiguous(memory_format=torch.channels_last) and ref.is_contiguous()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_gather_pooler_trains_like_reference_and_is_a_config_line() -> None:
    """``GatherRoIAlign`` (a reference module, chosen by config for CPU training) gives the reference
    pooler's gradients on every level, and one override line selects it."""
    g = torch.Generator().manual_seed(7)
    strides = [4, 8, 16, 32]
    feats = [torch.randn(2, 8, 256 // s, 192 // s, generator=g, requires_grad=True) for s in strides]
    boxes = [_rois(60, 1, (64, 48), 4, g)[:, 1:], _rois(30, 1, (64, 48), 4, g)[:, 1:]]
    grads = []
    for cls in (MultiScaleRoIAlign, GatherRoIAlign):
        for f in feats:
            f.grad = None
        cls(strides, 7, 0, True).forward(feats, boxes).square().sum().backward()
        grads.append([torch.zeros_like(f) if f.grad is None else f.grad.clone() for f in feats])
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)

    from detres import build_model, load_config

    cfg = load_config("configs/examples/shapes_faster_rcnn.yaml",
                      ["model.roi_heads.box_pooler._target_=GatherRoIAlign"])
    assert type(build_model(cfg).roi_heads.box_pooler) is GatherRoIAlign
