"""Official DINO checkpoints (../shared/fixtures/dino, see its README): ``tools/convert.py --from dino CKPT
--out DIR`` writes DIR/model.pth and a config read from the checkpoint's tensors; the model built from
that config alone reproduces the official eval-mode outputs, losses and PostProcess.

The README's protocol ("How to compare"): (1) the model's own top-900 selection equals the official one
as a set, and in order up to swaps inside the listed near-tie chains; (2) every output, loss, match and
detection is compared with the selection forced to the official ``enc_topk_indices``. Tolerances: logits
1e-4, boxes 1e-5, losses 1e-4 + 1e-4 |ref|, PostProcess scores 2e-5 and boxes 1e-2 px; labels, matches,
cardinality and class error exact. One conversion per module; two forwards per image case (~3-6 s each).
"""
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
from detres.checkpoint.deformable_detr import is_official_deformable_detr
from detres.checkpoint.deformable_layout import read_levels
from detres.checkpoint.detr import is_official_detr
from detres.checkpoint.dino import convert_official_dino, dino_config, is_official_dino, read_dino_architecture
from detres.cli.convert import main as convert_main
from detres.structures import ImageBatch

LOGITS, BOXES, SCORES, PIXELS = 1e-4, 1e-5, 2e-5, 1e-2
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
CASES = pytest.mark.parametrize("case", ["single", "batch"])


@pytest.fixture(scope="module")
def fx(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "fixtures" / "dino" / "fixture_A.pt"
    if not path.is_file():
        pytest.skip(f"DINO fixture not found: {path}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    """The official-layout checkpoint drawn by gen_checkpoint.py from the fixture's manifest."""
    script = shared_dir / "fixtures" / "gen_checkpoint.py"
    manifest = shared_dir / "fixtures" / "dino" / "manifest.json"
    if not script.is_file() or not manifest.is_file():
        pytest.skip(f"checkpoint generator or manifest not found: {script}, {manifest}")
    out = tmp_path_factory.mktemp("dino_official") / "dino.pth"
    subprocess.run([sys.executable, str(script), str(manifest), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def official_sd(official_ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(official_ckpt, weights_only=True)["model"]


def _batch(c: dict[str, Any]) -> ImageBatch:
    """The README's input: normalized images top-left in a zero tensor of the batch's shape, mask True on padding."""
    ims = [(u.float() / 255 - MEAN) / STD for u in c["images_uint8"]]
    b, _, h, w = (int(v) for v in c["batch_shape"])
    x = torch.zeros(b, 3, h, w)
    mask = torch.ones(b, h, w, dtype=torch.bool)
    for i, im in enumerate(ims):
        x[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    return ImageBatch(x, [tuple(int(v) for v in s) for s in c["image_sizes"]], mask)


class Converted:
    """The fixture checkpoint converted with the CLI, the model built from DIR/config.yaml alone; runs cached."""

    def __init__(self, src: Path, out: Path, fx: dict[str, Any]) -> None:
        assert convert_main(["--from", "dino", str(src), "--out", str(out)]) == 0
        self.src, self.out, self.fx = src, out, fx
        self.cfg = detres.load_config(out / "config.yaml")
        torch.manual_seed(0)  # any init: every weight comes from the file
        self.model = detres.build_model(self.cfg).eval()
        self.report = detres.load_checkpoint(self.model, out / "model.pth")
        self._runs: dict[tuple[str, bool], Any] = {}

    def forced(self, case: str) -> tuple[ImageBatch, dict[str, Any]]:
        """forward_raw with the two-stage selection forced to the official ``enc_topk_indices``."""
        if (case, True) not in self._runs:
            batch = _batch(self.fx[case])
            with torch.no_grad():
                raw = self.model.forward_raw(batch, select_indices=self.fx[case]["enc_topk_indices"])
            self._runs[case, True] = (batch, raw)
        return self._runs[case, True]

    def free(self, case: str) -> tuple[torch.Tensor, ...]:
        """The model's own ``dense`` run (last output: the selected token indices [B, 900])."""
        if (case, False) not in self._runs:
            batch = _batch(self.fx[case])
            with torch.no_grad():
                self._runs[case, False] = self.model.dense(batch.tensor, batch.pad_mask)
        return self._runs[case, False]


@pytest.fixture(scope="module")
def conv(official_ckpt: Path, fx: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return Converted(official_ckpt, tmp_path_factory.mktemp("dino_converted"), fx)


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def test_layout_detection_and_full_load(conv: Converted, official_sd: dict[str, torch.Tensor]) -> None:
    obj = {"model": official_sd}
    assert is_official_dino(obj, official_sd)
    assert not is_official_deformable_detr(obj, official_sd) and not is_official_detr(obj, official_sd)
    # the official file itself loads through detres.load_checkpoint's auto-detection, every key used
    report = detres.load_checkpoint(conv.model, conv.src)
    assert report.source_format == "dino" and report.missing == [] and report.unexpected == []
    assert conv.report.source_format == "detres" and conv.report.missing == [] and conv.report.unexpected == []
    # the decoder's copies were dropped, the label book went to the denoising generator
    own = conv.model.state_dict()
    torch.testing.assert_close(own["head.denoising.label_enc.weight"], official_sd["label_enc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(own["head.bbox_embed.2.layers.0.weight"],
                               official_sd["transformer.decoder.bbox_embed.2.layers.0.weight"], rtol=0, atol=0)


def test_config_read_from_tensors(conv: Converted) -> None:
    text = (conv.out / "config.yaml").read_text()
    assert text.startswith("# Written by `tools/convert.py --from dino`") and "_base_" not in conv.cfg
    cfg, head, tr = conv.cfg, conv.cfg.model.head, conv.cfg.model.head.transformer
    assert cfg.num_classes == 91 and head.num_classes == 91 and head.num_queries == 900
    assert (tr.num_encoder_layers, tr.num_decoder_layers, tr.ffn_dim) == (2, 3, 512)
    assert (tr.nhead, tr.enc_n_points, tr.dec_n_points) == (8, 4, 4)
    assert head.share_pred_heads is True and head.denoising.num_dn_queries == 100
    assert cfg.model.backbone.depth == 50 and list(cfg.model.backbone.out_features) == ["res3", "res4", "res5"]
    assert list(cfg.model.neck.in_features) == ["res3", "res4", "res5"]
    assert (cfg.model.neck.num_extra_levels, cfg.model.neck.out_channels) == (1, 256)
    head_module = conv.model.head
    assert head_module.class_embed[0] is head_module.class_embed[2]  # one shared module, as the reference
    assert head_module.denoising.label_enc.num_embeddings == 92


@CASES
def test_own_selection_equals_official_up_to_near_ties(conv: Converted, case: str) -> None:
    """README protocol 1: same set; order equal except swaps inside chains of listed near-tie neighbours."""
    c = conv.fx[case]
    layer_logits, _, _, _, _, topk = conv.free(case)
    official = c["enc_topk_indices"]
    assert topk.shape == official.shape
    for b in range(official.shape[0]):
        ours, theirs = topk[b].tolist(), official[b].tolist()
        assert set(ours) == set(theirs), f"image {b}: selected tokens differ"
        ties = set(c["enc_near_tie_positions"][b].tolist())
        start = 0
        for p in range(len(theirs)):  # a segment ends where p and p + 1 are not a listed near-tie
            if p + 1 == len(theirs) or p not in ties:
                assert sorted(ours[start:p + 1]) == sorted(theirs[start:p + 1]), (
                    f"image {b}: order differs at positions {start}..{p}, not a near-tie chain")
                start = p + 1
    if torch.equal(topk, official):  # README protocol 3: the unforced run is comparable only in that case
        _close(layer_logits[-1], c["outputs"]["pred_logits"], LOGITS, "free run pred_logits")


@CASES
def test_raw_outputs_match_official(conv: Converted, case: str) -> None:
    _, raw = conv.forced(case)
    ref = conv.fx[case]["outputs"]
    assert set(raw) == set(ref) and raw["dn_meta"] is None and ref["dn_meta"] is None
    _close(raw["pred_logits"], ref["pred_logits"], LOGITS, "pred_logits")
    _close(raw["pred_boxes"], ref["pred_boxes"], BOXES, "pred_boxes")
    assert len(raw["aux_outputs"]) == len(ref["aux_outputs"]) == 2
    for i, (ours, theirs) in enumerate(zip(raw["aux_outputs"], ref["aux_outputs"])):
        assert set(ours) == set(theirs)
        _close(ours["pred_logits"], theirs["pred_logits"], LOGITS, f"aux_outputs[{i}].pred_logits")
        _close(ours["pred_boxes"], theirs["pred_boxes"], BOXES, f"aux_outputs[{i}].pred_boxes")
    assert set(raw["interm_outputs"]) == set(ref["interm_outputs"])
    _close(raw["interm_outputs"]["pred_logits"], ref["interm_outputs"]["pred_logits"], LOGITS, "interm.pred_logits")
    _close(raw["interm_outputs"]["pred_boxes"], ref["interm_outputs"]["pred_boxes"], BOXES, "interm.pred_boxes")
    # the reference stores the "pre" logits once (they are interm_outputs'): ours are the same tensor's values
    pre, ref_pre = raw["interm_outputs_for_matching_pre"], ref["interm_outputs_for_matching_pre"]
    assert set(ref_pre) <= set(pre) == {"pred_logits", "pred_boxes"}
    _close(pre["pred_logits"], ref["interm_outputs"]["pred_logits"], LOGITS, "matching_pre.pred_logits")
    _close(pre["pred_boxes"], ref_pre["pred_boxes"], BOXES, "matching_pre.pred_boxes")


@CASES
def test_losses_and_matches_match_official(conv: Converted, case: str) -> None:
    _, raw = conv.forced(case)
    c = conv.fx[case]
    crit = conv.model.head.criterion
    assert crit.weight_dict == conv.fx["weight_dict"]
    with torch.no_grad():
        losses = crit(raw, c["targets"])
    assert set(losses) == set(c["losses"]) and len(losses) == 43
    for key, ref in c["losses"].items():
        ours, ref = float(losses[key]), float(ref)
        if key.startswith(("cardinality_error", "class_error")):
            assert ours == ref, f"{key}: {ours} vs official {ref}"
        else:
            assert abs(ours - ref) <= 1e-4 + 1e-4 * abs(ref), f"{key}: {ours} vs official {ref}"
    layers = [*raw["aux_outputs"], raw["interm_outputs"], raw]  # the fixture's order: aux 0, aux 1, interm, final
    for name, layer, ref_layer in zip(["aux 0", "aux 1", "interm", "final"], layers, c["match_indices"]):
        with torch.no_grad():
            got = crit.matcher(layer, c["targets"])
        for b, ((q, t), (rq, rt)) in enumerate(zip(got, ref_layer)):
            ours = sorted(zip(q.tolist(), t.tolist()))
            assert ours == sorted(zip(rq.tolist(), rt.tolist())), f"{name} matches of image {b} differ"


@CASES
def test_postprocess_matches_official(conv: Converted, case: str) -> None:
    batch, raw = conv.forced(case)
    c = conv.fx[case]
    k = raw["pred_logits"].shape[-1]
    results = conv.model.postprocess(raw, batch, [tuple(int(v) for v in s) for s in c["orig_sizes"]])
    assert len(results) == len(c["postprocess"]) == len(batch)
    flat_scores, flat_index = raw["pred_logits"].sigmoid().flatten(1).topk(conv.fx["num_select"], dim=1)
    for b, (ours, theirs) in enumerate(zip(results, c["postprocess"])):
        assert ours["scores"].shape == theirs["scores"].shape == (300,)
        # our entries' flat index (query * K + label): the scores and labels are exactly the flat top-k's
        assert torch.equal(ours["scores"], flat_scores[b]) and torch.equal(ours["labels"], flat_index[b] % k)
        mine = {int(i): j for j, i in enumerate(flat_index[b])}
        official = {int(i): j for j, i in enumerate(c["postprocess_flat_topk_index"][b])}
        # the sets may differ only by entries within the score tolerance of the 300th score
        edge = float(theirs["scores"].min())
        for key in set(mine) ^ set(official):
            score = float(ours["scores"][mine[key]]) if key in mine else float(theirs["scores"][official[key]])
            assert abs(score - edge) <= SCORES, f"image {b}: flat index {key} (score {score}) only on one side"
        common = sorted(set(mine) & set(official))
        assert len(common) >= 290
        i, j = torch.tensor([mine[x] for x in common]), torch.tensor([official[x] for x in common])
        assert torch.equal(ours["labels"][i], theirs["labels"][j]), f"image {b}: labels differ"
        _close(ours["scores"][i], theirs["scores"][j], SCORES, f"image {b} scores")
        _close(ours["boxes"][i], theirs["boxes"][j], PIXELS, f"image {b} boxes (px)")


def test_mismatching_config_names_the_key(conv: Converted) -> None:
    cfg = detres.load_config(conv.out / "config.yaml", ["model.head.transformer.ffn_dim=1024"])
    model = detres.build_model(cfg)
    key = "head.transformer.encoder.layers.0.linear1.weight"
    for path in (conv.out / "model.pth", conv.src):  # the detres file and the official file
        with pytest.raises(ValueError, match=rf"{key}: file \(512, 256\) vs model \(1024, 256\)"):
            detres.load_checkpoint(model, path)


def test_reader_options_and_errors(official_sd: dict[str, torch.Tensor]) -> None:
    sd = dict(official_sd)
    assert read_dino_architecture(sd, nheads=16)["enc_n_points"] == 2  # same shapes: heads x points = 32
    with pytest.raises(ValueError, match="--nheads"):
        read_dino_architecture(sd, nheads=3)
    with pytest.raises(ValueError, match="--num-queries"):
        dino_config(sd, num_queries=300)
    # one layer's class head differs: the heads are not shared
    sd["class_embed.1.bias"] = sd["class_embed.1.bias"] + 1
    assert read_dino_architecture(sd)["share_pred_heads"] is False
    sd["label_enc.weight"] = torch.zeros(81, 256)
    with pytest.raises(ValueError, match="label_enc.weight has 81 rows"):
        read_dino_architecture(sd)
    del sd["label_enc.weight"]  # no label book (use_dn off): the written config has no denoising
    cfg, header = dino_config(sd)
    assert cfg.model.head.denoising is None and "denoising off" in header


# ---- the mapping and the level reader on small synthetic state dicts ----------------------------------


class _Tiny(nn.Module):
    """The names the converter looks at in a detres DINO: 4 backbone projections (5-scale), K-class heads."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.neck = nn.Module()
        self.neck.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 1)) for _ in range(4))
        self.neck.extra_convs = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3))])
        self.head = nn.Module()
        self.head.class_embed = nn.ModuleList([nn.Linear(4, k)])
        self.head.transformer = nn.Module()
        self.head.transformer.enc_out_class_embed = nn.Linear(4, k)
        self.head.denoising = nn.Module()
        self.head.denoising.label_enc = nn.Embedding(k + 1, 4)


def _tiny_official(k: int = 91) -> dict[str, torch.Tensor]:
    rows = torch.arange(k, dtype=torch.float32)[:, None].expand(k, 4).clone()
    sd = {f"input_proj.{i}.0.weight": torch.randn(4, 4, 1, 1) for i in range(4)}
    sd["input_proj.4.0.weight"] = torch.randn(4, 4, 3, 3)
    sd["transformer.level_embed"] = torch.zeros(5, 4)
    sd["transformer.tgt_embed.weight"] = torch.zeros(10, 4)
    sd["class_embed.0.weight"] = rows
    sd["transformer.decoder.class_embed.0.weight"] = rows.clone()
    sd["transformer.enc_out_class_embed.weight"] = rows.clone()
    sd["label_enc.weight"] = torch.arange(k + 1, dtype=torch.float32)[:, None].expand(k + 1, 4).clone()
    sd["backbone.0.body.conv1.weight"] = torch.zeros(1)
    return sd


def test_mapping_five_scale_and_classes(caplog: pytest.LogCaptureFixture) -> None:
    sd = _tiny_official()
    assert is_official_dino({}, sd) and not is_official_deformable_detr({}, sd) and not is_official_detr({}, sd)
    assert read_levels(sd) == {"levels": 5, "d_model": 4, "out_features": ["res2", "res3", "res4", "res5"],
                               "num_extra_levels": 1}
    out = convert_official_dino(sd, _Tiny(91))
    assert set(out) == {*(f"neck.convs.{i}.0.weight" for i in range(4)), "neck.extra_convs.0.0.weight",
                        "head.transformer.level_embed", "head.transformer.tgt_embed.weight", "head.class_embed.0.weight",
                        "head.transformer.enc_out_class_embed.weight", "head.denoising.label_enc.weight",
                        "backbone.conv1.weight"}
    assert torch.equal(out["neck.extra_convs.0.0.weight"], sd["input_proj.4.0.weight"])
    # 80 classes: the rows of the 80 COCO ids in contiguous order; the label book keeps its padding row last
    ids = [float(i) for i in COCO_CATEGORY_IDS]
    out80 = convert_official_dino(sd, _Tiny(80))
    assert out80["head.class_embed.0.weight"][:, 0].tolist() == ids
    assert out80["head.transformer.enc_out_class_embed.weight"][:, 0].tolist() == ids
    assert out80["head.denoising.label_enc.weight"][:, 0].tolist() == [*ids, 91.0]
    # other counts: left out with a warning (fine-tuning); a differing duplicate: a warning naming it
    sd["transformer.decoder.class_embed.0.weight"] += 1
    with caplog.at_level(logging.WARNING, logger="detres.checkpoint.deformable_layout"):
        out20 = convert_official_dino(sd, _Tiny(20))
    assert not {"head.class_embed.0.weight", "head.denoising.label_enc.weight"} & set(out20)
    assert "fine-tuning" in caplog.text and "transformer.decoder.class_embed.0.weight differs" in caplog.text
    # a Deformable DETR state dict (no tgt_embed / label_enc) is not DINO's
    del sd["transformer.tgt_embed.weight"], sd["label_enc.weight"]
    assert not is_official_dino({}, sd) and is_official_deformable_detr({}, sd)
