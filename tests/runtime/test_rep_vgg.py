"""The ``rep_vgg`` runtime pass, on and off: RepVggBlocks of a random-weight HybridEncoder become one
3x3 conv each and the neck keeps its stated contract (relative 1e-4; measured about 1e-6)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from detres.modeling.necks import HybridEncoder
from detres.modeling.necks.csp_rep import RepVggBlock
from detres.runtime import optimize
from detres.runtime.rep_vgg import FusedRepVggBlock
from detres.structures import ShapeSpec
from tests.runtime.models import max_rel_diff

SHAPES = {"res3": ShapeSpec(16, 8), "res4": ShapeSpec(24, 16), "res5": ShapeSpec(32, 32)}


def _neck(expansion: float = 0.5) -> HybridEncoder:
    torch.manual_seed(0)
    neck = HybridEncoder(SHAPES, hidden_dim=32, nhead=4, dim_feedforward=48, expansion=expansion)
    g = torch.Generator().manual_seed(1)
    for m in neck.modules():  # non-trivial statistics, so the fold is exercised
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.3)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return neck.eval()


def _feats(h: int = 128, w: int = 160) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {k: torch.randn(2, s.channels, h // s.stride, w // s.stride, generator=g) for k, s in SHAPES.items()}


def test_block_fusion_is_exact_to_float32() -> None:
    """One block, eval BN with random statistics: fused output within relative 1e-5 of the two branches."""
    block = _neck().fpn_blocks[0].bottlenecks[0]
    x = torch.randn(2, block.conv1.conv.in_channels, 9, 13)
    fused = FusedRepVggBlock.from_block(block)
    with torch.no_grad():
        ref, out = block(x), fused(x)
    assert fused.conv.kernel_size == (3, 3) and fused.conv.bias is not None
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("expansion", [0.5, 1.0])
@pytest.mark.parametrize("passes", [["rep_vgg"], ["rep_vgg", "fold_bn"], None])
def test_pass_on_and_off_keeps_neck_features(expansion: float, passes: list[str] | None) -> None:
    """Alone, with fold_bn, and in the whole cpu backend: every RepVggBlock fused (2 CSP layers x 2
    paths x 3 blocks = 12), features within relative 1e-4 of the reference neck."""
    ref_neck = _neck(expansion)
    feats = _feats()
    with torch.no_grad():
        ref = ref_neck(feats)
    neck = optimize(copy.deepcopy(ref_neck), passes=passes)
    assert neck.runtime_passes["rep_vgg"] == 12
    assert not any(isinstance(m, RepVggBlock) for m in neck.modules())
    assert sum(isinstance(m, FusedRepVggBlock) for m in neck.modules()) == 12
    with torch.no_grad():
        out = neck(feats)
    assert list(out) == list(ref)
    assert max_rel_diff(out, ref) < 1e-4


def test_fold_bn_first_then_rep_vgg_also_fuses() -> None:
    """The fusion reads folded branches (norm already ``nn.Identity``, conv with a bias) too."""
    from detres.runtime.passes import fold_bn, rep_vgg

    ref_neck = _neck()
    feats = _feats(64, 96)
    with torch.no_grad():
        ref = ref_neck(feats)
        neck = copy.deepcopy(ref_neck)
        assert fold_bn(neck) > 0 and rep_vgg(neck) == 12
        assert max_rel_diff(neck(feats), ref) < 1e-4


def test_training_blocks_are_left_alone() -> None:
    """A block whose BN still trains is not a fixed linear map: ``is_fusable`` refuses it."""
    from detres.runtime.passes import rep_vgg

    neck = _neck().train()
    assert rep_vgg(neck) == 0
    assert sum(isinstance(m, RepVggBlock) for m in neck.modules()) == 12
