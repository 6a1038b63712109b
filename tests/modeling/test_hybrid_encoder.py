"""HybridEncoder (RT-DETR's neck): shapes equal output_shape(), the official key layout (fixture
manifests), gradients, training-mode BN, and a hand-written forward over the official keys."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detres.modeling import build_backbone_and_neck
from detres.modeling.necks import HybridEncoder
from detres.modeling.necks.hybrid_encoder import sincos_pos_embed_2d
from detres.structures import ShapeSpec

R18 = {"res3": ShapeSpec(128, 8), "res4": ShapeSpec(256, 16), "res5": ShapeSpec(512, 32)}
R50 = {"res3": ShapeSpec(512, 8), "res4": ShapeSpec(1024, 16), "res5": ShapeSpec(2048, 32)}
TINY = {"res3": ShapeSpec(6, 8), "res4": ShapeSpec(10, 16), "res5": ShapeSpec(12, 32)}


def _feats(shapes: dict[str, ShapeSpec], b: int, h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, s.channels, -(-h // s.stride), -(-w // s.stride), generator=g) for k, s in shapes.items()}


def _randomize_bn(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial running statistics and affine, so the eval-mode reference checks them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.mark.parametrize("shapes,expansion,hidden,size", [
    (R18, 0.5, 256, (64, 96)), (R50, 1.0, 256, (64, 64)), (R18, 0.5, 64, (100, 150)),
])
def test_shapes_equal_output_shape(shapes, expansion: float, hidden: int, size: tuple[int, int]) -> None:
    """R18- and R50-like inputs, square and non-square maps (100x150: sizes that do not halve exactly)."""
    torch.manual_seed(0)
    neck = HybridEncoder(shapes, hidden_dim=hidden, expansion=expansion).eval()
    with torch.no_grad():
        out = neck(_feats(shapes, 2, *size))
    spec = neck.output_shape()
    assert list(out) == list(spec) == ["p3", "p4", "p5"]
    for k, v in out.items():
        s = spec[k]
        assert s.channels == hidden and s.stride == 2 ** int(k[1:])
        assert tuple(v.shape) == (2, hidden, -(-size[0] // s.stride), -(-size[1] // s.stride))
        assert torch.isfinite(v).all()
    has_conv3 = expansion != 1.0
    assert isinstance(neck.fpn_blocks[0].conv3, torch.nn.Identity) != has_conv3


def test_built_from_backbone_output_shape() -> None:
    torch.manual_seed(0)
    bb, neck = build_backbone_and_neck(
        {"_target_": "ResNet", "depth": 18, "out_features": ["res3", "res4", "res5"]},
        {"_target_": "HybridEncoder", "hidden_dim": 32, "dim_feedforward": 64, "nhead": 4, "expansion": 0.5},
    )
    assert neck.in_features == ["res3", "res4", "res5"]
    assert [p.conv.in_channels for p in neck.input_proj] == [128, 256, 512]
    with torch.no_grad():
        out = neck(bb.eval()(torch.randn(1, 3, 64, 96)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p3": (1, 32, 8, 12), "p4": (1, 32, 4, 6), "p5": (1, 32, 2, 3)}


def _manifest_keys(shared_dir: Path, name: str) -> dict[str, list[int]]:
    path = shared_dir / "fixtures" / "rtdetrv2" / name
    if not path.exists():
        pytest.skip(f"{path} not found (the RT-DETRv2 fixture lives in ../shared)")
    tensors = json.loads(path.read_text())["tensors"]
    return {k[len("encoder."):]: shape for k, shape, _, _ in tensors if k.startswith("encoder.")}


@pytest.mark.parametrize("manifest,shapes,expansion", [("manifest.json", R18, 0.5), ("manifest_r50.json", R50, 1.0)])
def test_keys_equal_official_manifest(shared_dir: Path, manifest: str, shapes, expansion: float) -> None:
    """The official ``encoder.*`` keys (prefix stripped) and shapes are exactly this neck's state dict."""
    official = _manifest_keys(shared_dir, manifest)
    sd = HybridEncoder(shapes, expansion=expansion).state_dict()
    assert set(sd) == set(official)
    assert {k: list(v.shape) for k, v in sd.items()} == official


def test_v1_input_proj_keys() -> None:
    keys = HybridEncoder(TINY, hidden_dim=16, nhead=2, version="v1").state_dict()
    assert "input_proj.0.0.weight" in keys and "input_proj.0.1.running_var" in keys
    assert not any(k.startswith("input_proj.0.conv") for k in keys)


def test_gradients_reach_every_parameter_and_bn_trains() -> None:
    torch.manual_seed(0)
    neck = HybridEncoder(TINY, hidden_dim=16, nhead=2, dim_feedforward=32, expansion=0.5).train()
    feats = {k: v.requires_grad_() for k, v in _feats(TINY, 2, 64, 96).items()}
    before = neck.input_proj[0].norm.running_mean.clone()
    out = neck(feats)
    sum((v * torch.randn_like(v)).sum() for v in out.values()).backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in feats.values())
    assert not torch.equal(neck.input_proj[0].norm.running_mean, before)  # BN updates its statistics
    assert all(m.training for m in neck.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _official_pos(w: int, h: int, dim: int, temperature: float) -> torch.Tensor:
    """The official ``build_2d_sincos_position_embedding(w, h)``, transcribed."""
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


@pytest.mark.parametrize("h,w", [(20, 20), (4, 6), (7, 3), (1, 5)])
def test_pos_embed_equals_official_formula(h: int, w: int) -> None:
    """Bit-identical to the official layout, non-square maps included (a = t // h, b = t % h)."""
    ours = sincos_pos_embed_2d(h, w, 32, 10000.0)
    assert torch.equal(ours, _official_pos(w, h, 32, 10000.0))
    t = 5 % (h * w)
    assert ours[0, t, 0] == torch.sin(torch.tensor(float(t // h)))  # omega_0 = 1: sin(a)
    assert ours[0, t, 16] == torch.sin(torch.tensor(float(t % h)))  # sin(b)


# --- an independent forward over the official state-dict keys --------------------------------------

def _cna(sd: dict, p: str, x: torch.Tensor, stride: int = 1, act: bool = True) -> torch.Tensor:
    w = sd[f"{p}.conv.weight"]
    y = F.conv2d(x, w, None, stride, (w.shape[-1] - 1) // 2)
    y = F.batch_norm(y, sd[f"{p}.norm.running_mean"], sd[f"{p}.norm.running_var"], sd[f"{p}.norm.weight"],
                     sd[f"{p}.norm.bias"], False, 0.0, 1e-5)
    return F.silu(y) if act else y


def _csp(sd: dict, p: str, x: torch.Tensor, blocks: int) -> torch.Tensor:
    a = _cna(sd, f"{p}.conv1", x)
    for j in range(blocks):
        b = f"{p}.bottlenecks.{j}"
        a = F.silu(_cna(sd, f"{b}.conv1", a, act=False) + _cna(sd, f"{b}.conv2", a, act=False))
    y = a + _cna(sd, f"{p}.conv2", x)
    return _cna(sd, f"{p}.conv3", y) if f"{p}.conv3.conv.weight" in sd else y


def _aifi(sd: dict, p: str, src: torch.Tensor, pos: torch.Tensor, nhead: int) -> torch.Tensor:
    b, n, c = src.shape
    wq, wk, wv = sd[f"{p}.self_attn.in_proj_weight"].chunk(3)
    bq, bk, bv = sd[f"{p}.self_attn.in_proj_bias"].chunk(3)
    qk = src + pos
    heads = lambda t: t.view(b, n, nhead, c // nhead).transpose(1, 2)  # noqa: E731
    q, k, v = heads(qk @ wq.T + bq), heads(qk @ wk.T + bk), heads(src @ wv.T + bv)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // nhead), dim=-1) @ v
    attn = attn.transpose(1, 2).reshape(b, n, c) @ sd[f"{p}.self_attn.out_proj.weight"].T + sd[f"{p}.self_attn.out_proj.bias"]
    x = F.layer_norm(src + attn, (c,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
    ffn = F.gelu(x @ sd[f"{p}.linear1.weight"].T + sd[f"{p}.linear1.bias"]) @ sd[f"{p}.linear2.weight"].T
    return F.layer_norm(x + ffn + sd[f"{p}.linear2.bias"], (c,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])


def _reference(sd: dict, feats: list[torch.Tensor], nhead: int, blocks: int) -> list[torch.Tensor]:
    """The official HybridEncoder forward (eval mode), written from the paper and the key names."""
    proj = [_cna(sd, f"input_proj.{i}", f, act=False) for i, f in enumerate(feats)]
    x = proj[2]
    b, c, h, w = x.shape
    src = x.flatten(2).transpose(1, 2)
    src = _aifi(sd, "encoder.0.layers.0", src, _official_pos(w, h, c, 10000.0), nhead)
    proj[2] = src.transpose(1, 2).reshape(b, c, h, w)
    top5 = _cna(sd, "lateral_convs.0", proj[2])
    f4 = _csp(sd, "fpn_blocks.0", torch.cat([F.interpolate(top5, scale_factor=2.0, mode="nearest"), proj[1]], 1), blocks)
    top4 = _cna(sd, "lateral_convs.1", f4)
    p3 = _csp(sd, "fpn_blocks.1", torch.cat([F.interpolate(top4, scale_factor=2.0, mode="nearest"), proj[0]], 1), blocks)
    p4 = _csp(sd, "pan_blocks.0", torch.cat([_cna(sd, "downsample_convs.0", p3, stride=2), top4], 1), blocks)
    p5 = _csp(sd, "pan_blocks.1", torch.cat([_cna(sd, "downsample_convs.1", p4, stride=2), top5], 1), blocks)
    return [p3, p4, p5]


@pytest.mark.parametrize("expansion,size", [(0.5, (64, 64)), (1.0, (64, 128)), (0.5, (128, 64))])
def test_matches_hand_written_reference(expansion: float, size: tuple[int, int]) -> None:
    """A tiny config against a plain-function forward over the official keys: within 1e-6 relative (measured 1e-7)."""
    torch.manual_seed(0)
    neck = HybridEncoder(TINY, hidden_dim=16, nhead=2, dim_feedforward=24, expansion=expansion, depth_mult=2 / 3)
    _randomize_bn(neck)
    neck.eval()
    feats = _feats(TINY, 2, *size, seed=3)
    with torch.no_grad():
        out = neck(feats)
        ref = _reference(neck.state_dict(), list(feats.values()), nhead=2, blocks=2)
    for (k, v), r in zip(out.items(), ref):
        assert v.shape == r.shape, k
        assert (v - r).abs().max() <= 1e-6 * max(1.0, r.abs().max().item()), k


def test_no_encoder_layers_and_errors() -> None:
    torch.manual_seed(0)
    neck = HybridEncoder(TINY, hidden_dim=16, nhead=2, num_encoder_layers=0).eval()
    assert not any("layers" in k for k in neck.state_dict())
    with torch.no_grad():
        assert neck(_feats(TINY, 1, 64, 64))["p5"].shape == (1, 16, 2, 2)
    with pytest.raises(ValueError, match="res6"):
        HybridEncoder(TINY, in_features=["res4", "res6"])
    with pytest.raises(ValueError, match="use_encoder_idx"):
        HybridEncoder(TINY, use_encoder_idx=[3])
    with pytest.raises(ValueError, match="strides"):
        HybridEncoder(TINY, in_features=["res3", "res5"])
    with pytest.raises(ValueError, match="activation"):
        HybridEncoder(TINY, hidden_dim=16, nhead=2, act="mish2")
