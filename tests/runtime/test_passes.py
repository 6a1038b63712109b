"""Each runtime pass, on and off, on random-weight detectors (the shapes example's ResNet-18 FPN Faster
R-CNN and DETR, frozen BN): it rewrites the module types it targets and keeps its stated contract."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detres.modeling.backbones.resnet import ResNet
from detres.modeling.heads.roi_heads import ConvFCHead, MultiScaleRoIAlign
from detres.runtime import BACKENDS, PASSES, optimize
from detres.runtime.convs import PointwiseConv2d, WinogradConv2d
from detres.runtime.dense import FrozenDense
from detres.modeling.heads.roi_heads.pooler import GatherRoIAlign
from detres.runtime.heads import HWCFlattenBoxHead, OneDNNLinear
from detres.modeling.layers.ms_deform_attn import MSDeformAttn
from detres.runtime.deform_attn import GatherMSDeformAttn
from tests.runtime.models import (TinyDeformModel, assert_detections_match, images, max_rel_diff, random_stats, tiny_detr,
                                  tiny_frcnn)

ONEDNN = torch.backends.mkldnn.is_available()
# Big enough that Winograd's size rules (>= 512 pixels, >= 128 channels when NHWC) let it run.
SIZES = ((256, 320), (224, 288))
# Module type each pass puts in the model, and whether it can be absent on this build.
MADE = {
    "fold_bn": (nn.Identity, True), "channels_last": (HWCFlattenBoxHead, True), "pointwise": (PointwiseConv2d, True),
    "onednn_linear": (OneDNNLinear, ONEDNN), "winograd": (WinogradConv2d, True),  # GEMM form without NNPACK
    "roi_align_rows": (GatherRoIAlign, True),
}


@pytest.fixture(scope="module")
def frcnn_ref() -> tuple[nn.Module, list[torch.Tensor], list[dict], dict[str, torch.Tensor]]:
    model = tiny_frcnn()
    ims = images(*SIZES)
    with torch.inference_mode():
        return model, ims, model(ims), model.features(model.preprocess(ims).tensor)


@pytest.mark.parametrize("name", list(MADE))
def test_faster_rcnn_pass_keeps_detections(name: str, frcnn_ref) -> None:
    """One pass alone: it rewrites its module types (count > 0), features stay within relative 1e-4
    and the detections match the reference's within 1e-3 of the box scale."""
    ref_model, ims, ref, ref_feats = frcnn_ref
    model = optimize(copy.deepcopy(ref_model), passes=[name])
    made, available = MADE[name]
    assert model.runtime_passes == {name: model.runtime_passes[name]}
    assert (model.runtime_passes[name] > 0) == available
    assert any(type(m) is made for m in model.modules()) == available
    with torch.inference_mode():
        out = model(ims)
        feats = model.features(model.preprocess(ims).tensor)
    assert max_rel_diff(feats, ref_feats) < 1e-4
    assert_detections_match(out, ref)


def test_fold_bn_removes_every_frozen_norm_of_resnet18(frcnn_ref) -> None:
    model = optimize(copy.deepcopy(frcnn_ref[0]), passes=["fold_bn"])
    assert model.runtime_passes["fold_bn"] == 20  # stem + 2 per block x 8 + 3 downsample norms
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_fold_bn_folds_the_resnet_vd_deep_stem() -> None:
    """ResNet-vd's stem is conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv) then bn1: bn1 folds
    into the Sequential's last conv, so no norm is left; features within relative 1e-5."""
    model = ResNet(depth=18, variant="d", out_features=["res4", "res5"]).eval()
    random_stats(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    optimize(model, passes=["fold_bn"])
    assert model.runtime_passes["fold_bn"] == 22  # 3 stem (two in conv1, bn1) + 2 per block x 8 + 3 downsample
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert max_rel_diff(model(x), ref) < 1e-5


def test_channels_last_box_head_is_the_reference_head_with_permuted_columns(frcnn_ref) -> None:
    """The HWC-flatten head gives the reference head's features for NCHW and NHWC inputs (1e-5), and
    every 4-D weight is channels-last."""
    model = optimize(copy.deepcopy(frcnn_ref[0]), passes=["channels_last"])
    heads = [m for m in frcnn_ref[0].modules() if type(m) is ConvFCHead]
    fast = [m for m in model.modules() if type(m) is HWCFlattenBoxHead]
    assert len(heads) == len(fast) == 1 and not any(type(m) is ConvFCHead for m in model.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    c, r, _ = heads[0].flat_shape
    x = torch.randn(6, c, r, r)
    with torch.no_grad():
        ref = heads[0](x.clone())
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(fast[0](inp.clone()), ref, rtol=1e-5, atol=1e-5)


def test_every_default_cpu_pass_together(frcnn_ref) -> None:
    ref_model, ims, ref, _ = frcnn_ref
    model = optimize(copy.deepcopy(ref_model))
    assert list(model.runtime_passes) == ["rep_vgg", "fold_bn", "channels_last", "pointwise", "onednn_linear",
                                          "winograd", "roi_align_rows", "ms_deform_gather"]
    assert model.runtime_passes["ms_deform_gather"] == 0  # no MSDeformAttn in Faster R-CNN
    assert model.runtime_passes["rep_vgg"] == 0  # nor RepVGG blocks
    assert not any(type(m) in (MultiScaleRoIAlign, ConvFCHead, FrozenBatchNorm2d) for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with torch.inference_mode():
        out = model(ims)
    assert_detections_match(out, ref)


@pytest.mark.parametrize("names", [["fold_bn"], ["channels_last"], ["pointwise"], ["onednn_linear"], ["winograd"],
                                   ["fold_bn", "channels_last", "pointwise", "onednn_linear", "winograd"]])
def test_detr_passes_keep_raw_outputs(names: list[str]) -> None:
    """DETR gets every pass that matches its module types: raw outputs within relative 1e-4."""
    model = tiny_detr()
    batch = model.preprocess(images(*SIZES))
    with torch.inference_mode():
        raw = model.forward_raw(batch)
        ref = {k: raw[k] for k in ("pred_logits", "pred_boxes")}
    optimize(model, passes=names)
    expect = {"fold_bn": True, "channels_last": True, "pointwise": True, "onednn_linear": ONEDNN, "winograd": True}
    for n in names:
        assert (model.runtime_passes[n] > 0) == expect[n], n
    with torch.inference_mode():
        raw = model.forward_raw(batch)
    assert max_rel_diff({k: raw[k] for k in ref}, ref) < 1e-4
    if "onednn_linear" in names and ONEDNN:  # attention projections are not plain Linear layers
        assert all(type(m.out_proj) is not OneDNNLinear for m in model.modules() if isinstance(m, nn.MultiheadAttention))


def test_jit_freeze_features_match_and_cache_per_shape(frcnn_ref) -> None:
    model = optimize(copy.deepcopy(frcnn_ref[0]), passes=["fold_bn", "jit_freeze"])
    assert model.runtime_passes["jit_freeze"] == 1 and isinstance(model.backbone, FrozenDense) and model.neck is None
    x1, x2 = torch.randn(1, 3, 128, 160), torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        ref1, ref2 = frcnn_ref[0].features(x1), frcnn_ref[0].features(x2)
        out1, out2, again = model.features(x1), model.features(x2), model.features(x1)
    assert len(model.backbone._cache) == 2  # one frozen graph per input shape, reused
    for ref, out in ((ref1, out1), (ref2, out2), (ref1, again)):
        assert set(out) == set(ref) == {"p3", "p4", "p5", "p6"}
        assert max_rel_diff(out, ref) < 1e-4


def test_compile_wraps_backbone_and_neck(frcnn_ref) -> None:
    model = optimize(copy.deepcopy(frcnn_ref[0]), passes=["compile"])
    assert model.runtime_passes["compile"] == 2
    assert all(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in (model.backbone, model.neck))


@pytest.mark.slow
def test_compiled_features_match(frcnn_ref) -> None:
    model = optimize(copy.deepcopy(frcnn_ref[0]), passes=["compile"])
    x = torch.randn(1, 3, 128, 160)
    with torch.inference_mode():
        assert max_rel_diff(model.features(x), frcnn_ref[0].features(x)) < 1e-4


# Passes checked on TinyDeformModel (MSDeformAttn layers) rather than on Faster R-CNN.
DEFORM_MADE = {"ms_deform_gather": GatherMSDeformAttn}


@pytest.mark.parametrize("names", [["ms_deform_gather"], list(BACKENDS["cpu"])])
def test_deformable_attention_passes_keep_outputs(names: list[str]) -> None:
    """The deformable-attention pass alone and with every default CPU pass (onednn_linear rewrites
    the projections first): every MSDeformAttn is replaced, outputs within 1e-5 abs."""
    model = TinyDeformModel()
    inputs = TinyDeformModel.inputs()
    with torch.no_grad():
        ref = model(*inputs)
    optimize(model, passes=names)
    for name, made in DEFORM_MADE.items():
        assert model.runtime_passes[name] == 2 and sum(type(m) is made for m in model.modules()) == 2
    assert not any(type(m) is MSDeformAttn for m in model.modules())
    with torch.no_grad():
        out = model(*inputs)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5)


def test_every_pass_is_checked_on_and_off() -> None:
    """A new pass must join MADE (Faster R-CNN), DEFORM_MADE or the passes tested by name elsewhere
    (rep_vgg: tests/runtime/test_rep_vgg.py)."""
    assert set(PASSES) == set(MADE) | set(DEFORM_MADE) | {"jit_freeze", "compile", "rep_vgg"}


def test_every_pass_is_documented_with_its_contract() -> None:
    for name, p in PASSES.items():
        assert p.name == name and "ontract" in p.contract, name
