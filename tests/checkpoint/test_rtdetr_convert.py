"""Official RT-DETRv2 checkpoints (../shared/fixtures/rtdetrv2, see its README):
``tools/convert.py --from rtdetr CKPT --out DIR`` writes DIR/model.pth and a config read from the
checkpoint's tensors; the model built from that config alone reproduces the official outputs.

R18 (3 decoder layers) on the ``single`` and ``batch`` cases; R50 (6 layers, ~170 MB checkpoint) on its
single image, ``slow``. Tolerances are the README's: logits 1e-4, boxes 1e-5, post-processor scores
1e-5 and boxes 5e-3 px, losses 1e-5 relative; encoder top-k indices and labels exact."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import detres
from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS
from detres.checkpoint.io import unwrap_state_dict
from detres.checkpoint.rtdetr import check_points_scale, convert_official_rtdetr, is_official_rtdetr
from detres.cli.convert import main as convert_main
from detres.structures import ImageBatch

LOGITS, BOXES, SCORES, PIXELS, LOSS_REL = 1e-4, 1e-5, 1e-5, 5e-3, 1e-5
MANIFESTS = {"r18": "manifest.json", "r50": "manifest_r50.json"}


@pytest.fixture(scope="module")
def fx(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "fixtures" / "rtdetrv2" / "fixture_A.pt"
    if not path.is_file():
        pytest.skip(f"RT-DETRv2 fixture not found: {path}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def official_ckpt(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Any:
    """model -> the official-layout checkpoint drawn by gen_checkpoint.py (written once per session)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp("rtdetr_official") / f"{name}.pth"
            script = shared_dir / "fixtures" / "gen_checkpoint.py"
            manifest = shared_dir / "fixtures" / "rtdetrv2" / MANIFESTS[name]
            if not script.is_file() or not manifest.is_file():
                pytest.skip(f"checkpoint generator or manifest not found: {script}, {manifest}")
            subprocess.run([sys.executable, str(script), str(manifest), str(out)], check=True, capture_output=True)
            made[name] = out
        return made[name]

    return get


class Converted:
    """One checkpoint converted with the CLI's function, built from DIR/config.yaml alone; runs cached."""

    def __init__(self, src: Path, out: Path) -> None:
        assert convert_main(["--from", "rtdetr", str(src), "--out", str(out)]) == 0
        self.src, self.out = src, out
        self.cfg = detres.load_config(out / "config.yaml")
        torch.manual_seed(0)  # any init: every weight comes from the file
        self.model = detres.build_model(self.cfg).eval()
        self.report = detres.load_checkpoint(self.model, out / "model.pth")
        self._runs: dict[str, dict[str, Any]] = {}

    def run(self, case: str, images_u8: torch.Tensor) -> dict[str, Any]:
        """forward_raw and the selected anchor indices on the README's input (u8 / 255, 640x640, no padding)."""
        if case not in self._runs:
            x = images_u8.float() / 255
            batch = ImageBatch(x, [tuple(x.shape[-2:])] * len(x), torch.zeros(len(x), *x.shape[-2:], dtype=torch.bool))
            with torch.no_grad():
                raw = self.model.forward_raw(batch)
                topk = self.model.dense(batch.tensor, batch.pad_mask)[-1]
            self._runs[case] = {"batch": batch, "raw": raw, "topk": topk}
        return self._runs[case]


@pytest.fixture(scope="module")
def r18(official_ckpt: Any, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return Converted(official_ckpt("r18"), tmp_path_factory.mktemp("rtdetr_r18"))


def _case(fx: dict[str, Any], case: str) -> tuple[dict[str, Any], torch.Tensor]:
    """(the fixture's reference for ``case``, its uint8 images)."""
    if case == "r50":
        return fx["r50"]["single"], fx["images_u8"][[0]]
    return fx[case], fx["images_u8"][fx[case]["image_indices"]]


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def _check_raw(conv: Converted, fx: dict[str, Any], case: str, layers: int) -> None:
    ref, images = _case(fx, case)
    got = conv.run(case, images)
    raw, out = got["raw"], ref["outputs"]
    assert torch.equal(got["topk"], ref["enc_topk_ind"]), "encoder top-k selection differs from the official"
    assert set(raw) == set(out)
    assert raw["enc_meta"] == out["enc_meta"]
    _close(raw["pred_logits"], out["pred_logits"], LOGITS, "pred_logits")
    _close(raw["pred_boxes"], out["pred_boxes"], BOXES, "pred_boxes")
    assert len(raw["aux_outputs"]) == len(out["aux_outputs"]) == layers - 1
    for name in ("aux_outputs", "enc_aux_outputs"):
        assert len(raw[name]) == len(out[name])
        for i, (ours, theirs) in enumerate(zip(raw[name], out[name])):
            assert set(ours) == set(theirs)
            _close(ours["pred_logits"], theirs["pred_logits"], LOGITS, f"{name}[{i}].pred_logits")
            _close(ours["pred_boxes"], theirs["pred_boxes"], BOXES, f"{name}[{i}].pred_boxes")


def _check_losses(conv: Converted, fx: dict[str, Any], case: str) -> None:
    ref, images = _case(fx, case)
    raw = conv.run(case, images)["raw"]
    crit = conv.model.head.criterion
    for name, target_set in ref["losses"].items():
        with torch.no_grad():
            ours = crit.weighted(crit(raw, target_set["targets"]))
        theirs = target_set["loss_dict"]
        assert set(theirs) <= set(ours), f"{name}: terms {sorted(set(theirs) - set(ours))} missing"
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=LOSS_REL, atol=0, msg=lambda m: f"{name} {key}: {m}")


def _check_postprocess(conv: Converted, fx: dict[str, Any], case: str) -> None:
    ref, images = _case(fx, case)
    got = conv.run(case, images)
    sizes = [(int(h), int(w)) for w, h in ref["orig_target_sizes"].tolist()]  # official (w, h) -> (h, w)
    results = conv.model.postprocess(got["raw"], got["batch"], sizes)
    assert len(results) == len(ref["postprocessed"])
    for b, (ours, theirs) in enumerate(zip(results, ref["postprocessed"])):
        assert ours["scores"].shape == theirs["scores"].shape == (300,)
        _close(ours["scores"], theirs["scores"], SCORES, f"image {b} scores")
        # the README: sorted scores have near ties (6.6e-7 apart); labels and boxes matched per detection
        free = set(range(300))
        for i in range(300):
            hit = next((j for j in sorted(free, key=lambda j: abs(j - i)) if int(theirs["labels_80"][j]) == int(ours["labels"][i])
                        and abs(float(theirs["scores"][j] - ours["scores"][i])) <= SCORES
                        and float((theirs["boxes"][j] - ours["boxes"][i]).abs().max()) <= PIXELS), None)
            assert hit is not None, f"image {b} detection {i} (label {int(ours['labels'][i])}) has no official counterpart"
            free.remove(hit)
        assert torch.equal(ours["labels"], theirs["labels_80"]), f"image {b}: labels (order) differ"
        coco = torch.tensor(COCO_CATEGORY_IDS)[ours["labels"]]
        assert torch.equal(coco, theirs["labels"]), f"image {b}: COCO ids differ"


# ---- R18: layout, config, outputs, losses, postprocess -------------------------------------------------


def test_layout_detection_and_auto_load(r18: Converted) -> None:
    obj = torch.load(r18.src, weights_only=True)
    sd = obj["ema"]["module"]
    assert is_official_rtdetr(obj, sd)
    report = detres.load_checkpoint(r18.model, r18.src)  # the official file, format auto-detected
    assert report.source_format == "rtdetr" and report.missing == [] and report.unexpected == []
    assert r18.report.source_format == "detres" and r18.report.missing == [] and r18.report.unexpected == []
    written = torch.load(r18.out / "model.pth", weights_only=True)["model"]
    assert not any("anchors" in k or "valid_mask" in k or "num_points_scale" in k for k in written)


def test_config_read_from_tensors(r18: Converted) -> None:
    text = (r18.out / "config.yaml").read_text()
    assert "_base_" not in r18.cfg and text.startswith("# Written by `tools/convert.py --from rtdetr`")
    m = r18.cfg.model
    assert (m.backbone.depth, m.backbone.norm, m.backbone.variant, m.backbone.first_block_projection) == (18, "bn", "d", True)
    assert list(m.backbone.out_features) == ["res3", "res4", "res5"] and m.backbone.weights is None
    assert (m.neck.hidden_dim, m.neck.expansion, m.neck.dim_feedforward, m.neck.num_encoder_layers) == (256, 0.5, 1024, 1)
    assert list(m.neck.use_encoder_idx) == [2] and m.neck.version == "v2"
    tr = m.head.transformer
    assert (tr.num_decoder_layers, tr.ffn_dim, tr.n_points, tr.nhead) == (3, 1024, 4, 8)
    assert (r18.cfg.num_classes, m.head.num_queries, m.head.denoising.num_dn_queries) == (80, 300, 100)
    assert list(m.input.fixed_size_test) == [640, 640]


def test_preprocess_gives_the_reference_input(r18: Converted, fx: dict[str, Any]) -> None:
    """``model([uint8 image])``'s input block (unit_range, fixed_size_test) feeds exactly u8 / 255."""
    u8 = fx["images_u8"][0]
    batch = r18.model.preprocess([u8])
    assert batch.tensor.shape == (1, 3, 640, 640) and not batch.pad_mask.any()
    assert torch.equal(batch.tensor[0], u8.float() / 255)


@pytest.mark.parametrize("case", ["single", "batch"])
def test_raw_outputs_match_official(r18: Converted, fx: dict[str, Any], case: str) -> None:
    _check_raw(r18, fx, case, layers=3)


@pytest.mark.parametrize("case", ["single", "batch"])
def test_losses_match_official(r18: Converted, fx: dict[str, Any], case: str) -> None:
    _check_losses(r18, fx, case)


@pytest.mark.parametrize("case", ["single", "batch"])
def test_postprocess_matches_official(r18: Converted, fx: dict[str, Any], case: str) -> None:
    _check_postprocess(r18, fx, case)


def test_mismatching_checkpoint_names_key_and_shapes(r18: Converted) -> None:
    cfg = detres.load_config(r18.out / "config.yaml", ["model.head.transformer.ffn_dim=512"])
    model = detres.build_model(cfg)
    key = "head.transformer.decoder.layers.0.linear1.weight"
    for path in (r18.out / "model.pth", r18.src):  # the detres file and the official file
        with pytest.raises(ValueError) as err:
            detres.load_checkpoint(model, path)
        assert f"{key}: file (1024, 256) vs model (512, 256)" in str(err.value)


# ---- R50 (slow: a 170 MB checkpoint, 6 decoder layers) --------------------------------------------------


@pytest.mark.slow
def test_r50_matches_official(official_ckpt: Any, fx: dict[str, Any], tmp_path: Path) -> None:
    conv = Converted(official_ckpt("r50"), tmp_path / "r50")
    m = conv.cfg.model
    assert (m.backbone.depth, m.backbone.norm, m.neck.expansion, m.head.transformer.num_decoder_layers) == (50, "frozen_bn", 1.0, 6)
    assert conv.report.missing == [] and conv.report.unexpected == []
    _check_raw(conv, fx, "r50", layers=6)
    _check_losses(conv, fx, "r50")
    _check_postprocess(conv, fx, "r50")


# ---- synthetic state dicts: the wrapper, the dropped buffers, unequal points ---------------------------


def _scale(points: list[int]) -> torch.Tensor:
    return torch.tensor([1.0 / n for n in points for _ in range(n)])


def test_points_scale_equal_passes_unequal_fails() -> None:
    sd = {"decoder.decoder.layers.0.cross_attn.num_points_scale": _scale([4, 4, 4])}
    check_points_scale(sd, 3)
    sd["decoder.decoder.layers.1.cross_attn.num_points_scale"] = _scale([6, 4, 2])
    with pytest.raises(ValueError, match=r"layers\.1\.cross_attn\.num_points_scale: points per level \[6, 4, 2\]"):
        check_points_scale(sd, 3)


def test_mapping_drops_buffers_and_renames() -> None:
    sd = {
        "decoder.anchors": torch.full((1, 8, 4), 0.5), "decoder.valid_mask": torch.ones(1, 8, 1),
        "decoder.input_proj.0.conv.weight": torch.zeros(2, 2, 1, 1),
        "decoder.decoder.layers.0.cross_attn.num_points_scale": _scale([2]),
        "decoder.denoising_class_embed.weight": torch.zeros(3, 2),
        "decoder.enc_score_head.weight": torch.zeros(2, 2),
        "decoder.enc_output.0.weight": torch.zeros(2, 2),  # v1 (rtdetr_pytorch) name of enc_output.proj
        "encoder.input_proj.0.conv.weight": torch.zeros(2, 2, 1, 1),
        "backbone.conv1.conv1_1.conv.weight": torch.zeros(1),
        "backbone.res_layers.0.blocks.0.short.conv.weight": torch.zeros(1),
    }
    out = convert_official_rtdetr(sd)
    assert set(out) == {"head.transformer.input_proj.0.conv.weight", "head.denoising.label_enc.weight",
                        "head.transformer.enc_score_head.weight", "neck.input_proj.0.conv.weight",
                        "head.transformer.enc_output.proj.weight",
                        "backbone.conv1.0.weight", "backbone.layer1.0.downsample.1.weight"}


def test_ema_preferred_over_model() -> None:
    ema, model = {"a": torch.ones(1)}, {"a": torch.zeros(1)}
    assert unwrap_state_dict({"model": model, "ema": {"module": ema, "updates": 5}}) is ema
    assert unwrap_state_dict({"model": model}) is model
    assert unwrap_state_dict(ema) is ema
