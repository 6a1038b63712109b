"""The gather sampler of multi-scale deformable attention against the reference ``grid_sample`` op,
the ``ms_deform_gather`` pass, and its export. Inference only: gradients are not compared (the
gather path does not differentiate through the sampling locations' integer taps)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import Tensor, nn

from detres.modeling.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_sample
from detres.runtime import optimize
from detres.runtime.deform_attn import GatherMSDeformAttn, ms_deform_attn_gather
from tests.runtime.models import TinyDeformModel

SHAPES = [(9, 11), (5, 6), (3, 3), (1, 2)]
S = sum(h * w for h, w in SHAPES)


def _random(b: int, q: int, m: int = 4, d: int = 8, p: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """value [B, S, M, D] unit normal, locations [B, Q, M, L, P, 2] in [-0.3, 1.3], weights [B, Q, M, L, P]."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(b, S, m, d, generator=g)
    loc = torch.rand(b, q, m, len(SHAPES), p, 2, generator=g) * 1.6 - 0.3
    return value, loc, torch.rand(b, q, m, len(SHAPES), p, generator=g)


def test_gather_equals_grid_sample_on_random_locations_in_and_outside() -> None:
    value, loc, w = _random(2, 17)
    assert ((loc < 0) | (loc > 1)).any() and ((loc > 0) & (loc < 1)).any()
    ref = ms_deform_attn_sample(value, SHAPES, loc, w)
    out = ms_deform_attn_gather(value, SHAPES, loc, w)
    assert out.shape == ref.shape == (2, 17, 4 * 8)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_gather_on_borders_pixel_centres_and_far_outside() -> None:
    """Coordinates exactly 0 and 1, on the first/last pixel centres, half a pixel outside (one tap
    inside), a full pixel outside (zero) and very far outside (no integer overflow)."""
    value, _, _ = _random(1, 1, m=2, d=4, p=1)
    coords = []
    for h, w in SHAPES:
        for size in (w, h):
            coords += [0.0, 1.0, 0.5 / size, 1 - 0.5 / size, -0.5 / size, 1 + 0.5 / size, -1 / size, 1 + 1 / size]
    coords += [0.5, 0.25, -1e12, 1e12]
    c = torch.tensor(coords)
    xy = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)  # every (x, y) pair
    q = xy.shape[0]
    loc = xy[None, :, None, None, None, :].expand(1, q, 2, len(SHAPES), 1, 2).contiguous()
    w = torch.rand(1, q, 2, len(SHAPES), 1)
    ref = ms_deform_attn_sample(value, SHAPES, loc, w)
    out = ms_deform_attn_gather(value, SHAPES, loc, w)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert out[0, -2:].abs().max() == 0  # (huge, huge) samples only padding


def test_gather_rejects_shapes_that_do_not_fit_the_value() -> None:
    value, loc, w = _random(1, 2)
    with pytest.raises(ValueError, match="do not fit 4 levels"):
        ms_deform_attn_gather(value, SHAPES[:3], loc, w)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_gather_module_shares_parameters_and_equals_reference(ref_dim: int) -> None:
    """Through ``MSDeformAttn.forward`` with 2-d reference points and 4-d reference boxes, B=2, a
    padding mask: the same outputs (1e-5) from the same Parameter objects."""
    torch.manual_seed(0)
    ref_mod = MSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=3).eval()
    with torch.no_grad():
        ref_mod.sampling_offsets.weight.normal_(0, 0.5)
        ref_mod.attention_weights.weight.normal_(0, 0.5)
    fast = GatherMSDeformAttn(ref_mod)
    assert type(fast) is GatherMSDeformAttn and isinstance(fast, MSDeformAttn)
    assert [id(p) for p in fast.parameters()] == [id(p) for p in ref_mod.parameters()]
    assert (fast.d_model, fast.n_levels, fast.n_heads, fast.n_points) == (32, 4, 4, 3) and not fast.training
    query, value = torch.randn(2, 6, 32), torch.randn(2, S, 32)
    reference = torch.rand(2, 6, len(SHAPES), ref_dim)
    mask = torch.zeros(2, S, dtype=torch.bool)
    mask[1, :20] = True
    with torch.no_grad():
        expect = ref_mod(query, reference, value, SHAPES, mask)
        got = fast(query, reference, value, SHAPES, mask)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)


def test_pass_swaps_every_msdeformattn_and_keeps_outputs() -> None:
    model = TinyDeformModel()
    inputs = TinyDeformModel.inputs()
    with torch.no_grad():
        ref = model(*inputs)
    fast = optimize(copy.deepcopy(model), passes=["ms_deform_gather"])
    assert fast.runtime_passes == {"ms_deform_gather": 2}
    assert type(fast.encoder) is GatherMSDeformAttn and type(fast.decoder) is GatherMSDeformAttn
    assert not any(type(m) is MSDeformAttn for m in fast.modules())
    with torch.no_grad():
        out = fast(*inputs)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5)


class _Op(nn.Module):
    """The gather op as a module, for export."""

    def forward(self, value: Tensor, loc: Tensor, w: Tensor) -> Tensor:
        return ms_deform_attn_gather(value, SHAPES, loc, w)


def test_gather_exports_with_torch_export_and_onnx_opset17() -> None:
    """torch.export keeps the embedding_bag; ONNX (opset 17, TorchScript exporter as detres.export)
    gets Gather + ReduceSum, no Loop; both equal the reference op within 1e-5 (onnxruntime)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    value, loc, w = _random(2, 9)
    ref = ms_deform_attn_sample(value, SHAPES, loc, w)
    prog = torch.export.export(_Op(), (value, loc, w))
    assert any("embedding_bag" in str(n.target) for n in prog.graph.nodes)
    torch.testing.assert_close(prog.module()(value, loc, w), ref, rtol=0, atol=1e-5)
    buf = io.BytesIO()
    torch.onnx.export(_Op(), (value, loc, w), buf, dynamo=False, opset_version=17, input_names=["v", "loc", "w"])
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "Gather" in ops and "Loop" not in ops and "GridSample" not in ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"v": value.numpy(), "loc": loc.numpy(), "w": w.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=0, atol=1e-5)
