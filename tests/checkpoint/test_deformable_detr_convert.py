"""Official Deformable-DETR checkpoints (../shared/fixtures/deformable_detr, see its README):
``tools/convert.py --from deformable_detr CKPT --out DIR`` writes DIR/model.pth and a config read from
the checkpoint's tensors; the model built from that config alone reproduces the official outputs.

Both variants: main (box refinement + two-stage) and plain. Tolerances are the README's: logits 1e-4,
boxes and references 1e-5, PostProcess scores 2e-5 and boxes 5e-3 px, labels exact, top-k proposals
equal as a set per image. Each variant is converted once per module and each image case is run once
(~5 s per forward); the plain variant's padded batch and the main variant's free single-image run are
``slow``."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import detres
from detres.checkpoint.coco_layout import COCO_CATEGORY_IDS
from detres.checkpoint.deformable_detr import (convert_official_deformable_detr, is_official_deformable_detr,
                                               read_architecture)
from detres.checkpoint.detr import is_official_detr
from detres.cli.convert import main as convert_main
from detres.structures import ImageBatch

LOGITS, BOXES, SCORES, PIXELS = 1e-4, 1e-5, 2e-5, 5e-3
MANIFESTS = {"main": "manifest.json", "plain": "manifest_plain.json"}
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def fixture_dir(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "deformable_detr"
    if not (path / "fixture_A.pt").is_file():
        pytest.skip(f"Deformable DETR fixture not found: {path}")
    return path


@pytest.fixture(scope="module")
def fx(fixture_dir: Path) -> dict[str, Any]:
    return torch.load(fixture_dir / "fixture_A.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_ckpt(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Any:
    """variant -> the official-layout checkpoint drawn by gen_checkpoint.py (written once per session)."""
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            out = tmp_path_factory.mktemp("ddetr_official") / f"{variant}.pth"
            script = shared_dir / "fixtures" / "gen_checkpoint.py"
            manifest = shared_dir / "fixtures" / "deformable_detr" / MANIFESTS[variant]
            if not script.is_file() or not manifest.is_file():
                pytest.skip(f"checkpoint generator or manifest not found: {script}, {manifest}")
            subprocess.run([sys.executable, str(script), str(manifest), str(out)], check=True, capture_output=True)
            made[variant] = out
        return made[variant]

    return get


def _batch(fx: dict[str, Any], case: str) -> ImageBatch:
    """The README's input: normalized images top-left in a zero tensor of the batch's max size."""
    c = fx[case]
    ims = [(u.float() / 255 - MEAN) / STD for u in c["images_uint8"]]
    x = torch.zeros(len(ims), 3, *c["mask"].shape[-2:])
    for i, im in enumerate(ims):
        x[i, :, : im.shape[1], : im.shape[2]] = im
    return ImageBatch(x, [tuple(int(v) for v in s) for s in c["image_sizes"]], c["mask"])


class Converted:
    """One variant converted with the CLI's function, built from DIR/config.yaml alone; forwards cached."""

    def __init__(self, variant: str, src: Path, out: Path, fx: dict[str, Any]) -> None:
        assert convert_main(["--from", "deformable_detr", str(src), "--out", str(out)]) == 0
        self.variant, self.src, self.out, self.fx = variant, src, out, fx
        self.ref = fx if variant == "main" else fx["plain"]
        self.cfg = detres.load_config(out / "config.yaml")
        torch.manual_seed(0)  # any init: every weight comes from the file
        self.model = detres.build_model(self.cfg).eval()
        self.report = detres.load_checkpoint(self.model, out / "model.pth")
        self._raw: dict[str, Any] = {}

    def run(self, case: str) -> dict[str, Any]:
        """forward_raw on the case (two-stage: with the official top-k order forced, README "Ties")."""
        if case not in self._raw:
            batch = _batch(self.fx, case)
            forced = self.ref[case]["topk_proposals"] if self.variant == "main" else None
            with torch.no_grad():
                self._raw[case] = {"batch": batch, "raw": self.model.forward_raw(batch, select_indices=forced)}
        return self._raw[case]

    def free(self, case: str) -> tuple[torch.Tensor, ...]:
        """The two-stage model's own ``dense`` run (last output: its selected proposal indices)."""
        batch = self.run(case)["batch"]
        with torch.no_grad():
            return self.model.dense(batch.tensor, batch.pad_mask)


@pytest.fixture(scope="module")
def converted(official_ckpt: Any, fx: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """variant -> its Converted model, made once per module whatever order the tests run in."""
    made: dict[str, Converted] = {}

    def get(variant: str) -> Converted:
        if variant not in made:
            made[variant] = Converted(variant, official_ckpt(variant), tmp_path_factory.mktemp(f"ddetr_{variant}"), fx)
        return made[variant]

    return get


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


VARIANTS = pytest.mark.parametrize("variant", ["main", "plain"])
# ~5 s per forward: the default suite runs main on both cases and plain on the single image
CASES = pytest.mark.parametrize("variant,case", [
    ("main", "single"), ("main", "batch"), ("plain", "single"),
    pytest.param("plain", "batch", marks=pytest.mark.slow),
])


@VARIANTS
def test_layout_detection(converted: Any, variant: str) -> None:
    conv = converted(variant)
    sd = torch.load(conv.src, weights_only=True)["model"]
    assert is_official_deformable_detr({"model": sd}, sd)
    assert not is_official_detr({"model": sd}, sd)
    # the official file itself loads through detres.load_checkpoint's auto-detection, every key used
    report = detres.load_checkpoint(conv.model, conv.src)
    assert report.source_format == "deformable_detr"
    assert report.missing == [] and report.unexpected == []
    assert conv.report.source_format == "detres" and conv.report.missing == [] and conv.report.unexpected == []


@VARIANTS
def test_config_read_from_tensors(converted: Any, variant: str) -> None:
    conv = converted(variant)
    text = (conv.out / "config.yaml").read_text()
    assert "_base_" not in conv.cfg and text.startswith("# Written by `tools/convert.py --from deformable_detr`")
    cfg, head, tr = conv.cfg, conv.cfg.model.head, conv.cfg.model.head.transformer
    two = conv.variant == "main"
    assert cfg.num_classes == 91 and head.num_classes == 91
    assert (tr.num_encoder_layers, tr.num_decoder_layers, tr.ffn_dim) == (2, 3, 512)
    assert (tr.nhead, tr.enc_n_points, tr.dec_n_points) == (8, 4, 4)
    assert (head.with_box_refine, head.two_stage, head.num_queries) == (two, two, 300)
    assert cfg.model.backbone.depth == 50 and list(cfg.model.backbone.out_features) == ["res3", "res4", "res5"]
    assert list(cfg.model.neck.in_features) == ["res3", "res4", "res5"]
    assert (cfg.model.neck.num_extra_levels, cfg.model.neck.out_channels) == (1, 256)
    assert conv.model.head.num_classes == 91 and len(conv.model.head.transformer.decoder.layers) == 3


@CASES
def test_raw_outputs_match_official(converted: Any, variant: str, case: str) -> None:
    conv = converted(variant)
    raw, ref = conv.run(case)["raw"], conv.ref[case]["outputs"]
    assert set(raw) == set(ref)
    _close(raw["pred_logits"], ref["pred_logits"], LOGITS, "pred_logits")
    _close(raw["pred_boxes"], ref["pred_boxes"], BOXES, "pred_boxes")
    assert len(raw["aux_outputs"]) == len(ref["aux_outputs"]) == 2
    for i, (ours, theirs) in enumerate(zip(raw["aux_outputs"], ref["aux_outputs"])):
        assert set(ours) == set(theirs)
        _close(ours["pred_logits"], theirs["pred_logits"], LOGITS, f"aux_outputs[{i}].pred_logits")
        _close(ours["pred_boxes"], theirs["pred_boxes"], BOXES, f"aux_outputs[{i}].pred_boxes")
    if conv.variant == "main":
        assert set(raw["enc_outputs"]) == set(ref["enc_outputs"])
        _close(raw["enc_outputs"]["pred_logits"], ref["enc_outputs"]["pred_logits"], LOGITS, "enc_outputs.pred_logits")
        _close(raw["enc_outputs"]["pred_boxes"], ref["enc_outputs"]["pred_boxes"], BOXES, "enc_outputs.pred_boxes")


@pytest.mark.parametrize("variant,case", [
    pytest.param("main", "single", marks=pytest.mark.slow), ("main", "batch"), ("plain", "single"),
    pytest.param("plain", "batch", marks=pytest.mark.slow),
])
def test_proposals_and_init_reference(converted: Any, variant: str, case: str) -> None:
    conv = converted(variant)
    got, ref = conv.run(case), conv.ref[case]
    if conv.variant == "plain":
        qpos = conv.model.head.query_embed.weight[:, : conv.cfg.model.neck.out_channels]
        with torch.no_grad():
            init = conv.model.head.transformer.reference_points(qpos).sigmoid()
        _close(init.expand_as(ref["init_reference"]), ref["init_reference"], BOXES, "init_reference")
        return
    layer_logits, layer_boxes, _, _, topk = conv.free(case)
    official = ref["topk_proposals"]
    assert topk.shape == official.shape
    for b in range(official.shape[0]):
        assert set(topk[b].tolist()) == set(official[b].tolist()), f"image {b}: selected proposals differ"
    # the reference fed to decoder layer 0 = the selected proposals' boxes (official order)
    init = torch.gather(got["raw"]["enc_outputs"]["pred_boxes"], 1, official[..., None].expand(-1, -1, 4))
    _close(init, ref["init_reference"], BOXES, "init_reference")
    # the model's own selection gives the official rows, up to near-tie swaps: align by proposal index
    for b in range(official.shape[0]):
        where = {int(t): i for i, t in enumerate(official[b])}
        perm = torch.tensor([where[int(t)] for t in topk[b]])
        _close(layer_logits[-1, b], ref["outputs"]["pred_logits"][b, perm], LOGITS, f"free run logits, image {b}")
        _close(layer_boxes[-1, b], ref["outputs"]["pred_boxes"][b, perm], BOXES, f"free run boxes, image {b}")


@CASES
def test_postprocess_matches_official(converted: Any, variant: str, case: str) -> None:
    conv = converted(variant)
    got, ref = conv.run(case), conv.ref[case]
    sizes = [tuple(int(v) for v in s) for s in ref["orig_sizes"]]
    results = conv.model.postprocess(got["raw"], got["batch"], sizes)
    assert len(results) == len(ref["postprocess"])
    for b, (ours, theirs) in enumerate(zip(results, ref["postprocess"])):
        assert ours["scores"].shape == theirs["scores"].shape == (100,)
        _close(ours["scores"].sort(descending=True).values, theirs["scores"].sort(descending=True).values,
               SCORES, f"image {b} scores")
        # (score, label, box) matched as sets: near-equal scores may come in either order (README "Ties")
        free = list(range(len(theirs["scores"])))
        for i in range(len(ours["scores"])):
            hit = next((j for j in free if int(theirs["labels"][j]) == int(ours["labels"][i])
                        and abs(float(theirs["scores"][j] - ours["scores"][i])) <= SCORES
                        and float((theirs["boxes"][j] - ours["boxes"][i]).abs().max()) <= PIXELS), None)
            assert hit is not None, (f"image {b} detection {i} (label {int(ours['labels'][i])}, score "
                                     f"{float(ours['scores'][i]):.6f}) has no official counterpart")
            free.remove(hit)


def test_mismatching_checkpoint_names_first_key_and_shapes(converted: Any) -> None:
    conv = converted("main")
    cfg = detres.load_config(conv.out / "config.yaml", ["model.head.transformer.ffn_dim=1024"])
    model = detres.build_model(cfg)
    key = "head.transformer.encoder.layers.0.linear1.weight"
    for path in (conv.out / "model.pth", conv.src):  # the detres file and the official file
        with pytest.raises(ValueError) as err:
            detres.load_checkpoint(model, path)
        msg = str(err.value)
        assert f"{key}: file (512, 256) vs model (1024, 256)" in msg
        assert msg.index(key) < msg.index("linear1.bias")  # the first mismatching key comes first


# ---- the mapping and the reader on small synthetic state dicts ---------------------------------------


class _Tiny(nn.Module):
    """The names the converter looks at in a detres model: 3 backbone projections, class heads of K."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.neck = nn.Module()
        self.neck.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 1)) for _ in range(3))
        self.neck.extra_convs = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3))])
        self.head = nn.Module()
        self.head.class_embed = nn.ModuleList([nn.Linear(4, k)])


def _tiny_official(k: int = 91) -> dict[str, torch.Tensor]:
    sd = {f"input_proj.{i}.0.weight": torch.randn(4, 4, 1, 1) for i in range(3)}
    sd["input_proj.3.0.weight"] = torch.randn(4, 4, 3, 3)
    sd["class_embed.0.weight"] = torch.arange(k, dtype=torch.float32)[:, None].expand(k, 4).clone()
    sd["transformer.decoder.class_embed.0.weight"] = sd["class_embed.0.weight"].clone()
    sd["transformer.level_embed"] = torch.zeros(4, 4)
    sd["backbone.0.body.conv1.weight"] = torch.zeros(1)
    return sd


def test_mapping_classes_and_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    sd = _tiny_official()
    out = convert_official_deformable_detr(sd, _Tiny(91))
    assert set(out) == {"neck.convs.0.0.weight", "neck.convs.1.0.weight", "neck.convs.2.0.weight",
                        "neck.extra_convs.0.0.weight", "head.class_embed.0.weight", "head.transformer.level_embed",
                        "backbone.conv1.weight"}
    assert torch.equal(out["neck.extra_convs.0.0.weight"], sd["input_proj.3.0.weight"])
    # 80 classes: the columns of the 80 COCO ids, in contiguous order
    out80 = convert_official_deformable_detr(sd, _Tiny(80))
    assert out80["head.class_embed.0.weight"][:, 0].tolist() == [float(i) for i in COCO_CATEGORY_IDS]
    # other counts: left out with a warning (fine-tuning); a differing duplicate: a warning naming it
    sd["transformer.decoder.class_embed.0.weight"] += 1
    with caplog.at_level(logging.WARNING, logger="detres.checkpoint.deformable_layout"):
        out20 = convert_official_deformable_detr(sd, _Tiny(20))
    assert "head.class_embed.0.weight" not in out20
    assert "fine-tuning" in caplog.text and "transformer.decoder.class_embed.0.weight differs" in caplog.text


def test_cli_takes_dst_or_out_not_both(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        convert_main(["--from", "deformable_detr", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        convert_main(["--from", "deformable_detr", str(tmp_path / "a.pth")])


def test_reader_heads_points_and_queries(official_ckpt: Any) -> None:
    sd = torch.load(official_ckpt("main"), weights_only=True)["model"]
    assert read_architecture(sd)["enc_n_points"] == 4
    assert read_architecture(sd, nheads=16)["enc_n_points"] == 2  # same shapes: heads x points = 32
    assert read_architecture(sd, num_queries=100)["num_queries"] == 100  # two-stage: not in the tensors
    with pytest.raises(ValueError, match="--nheads"):
        read_architecture(sd, nheads=3)
    sd["backbone.0.body.layer3.6.conv1.weight"] = torch.zeros(1)  # 7 blocks in layer3: no ResNet
    with pytest.raises(ValueError, match=r"blocks per stage \[3, 4, 7, 3\]"):
        read_architecture(sd)
