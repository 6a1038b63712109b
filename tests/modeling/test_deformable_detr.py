"""Deformable DETR with tiny random weights: output shapes of the plain / refine / two-stage models,
gradients into the deformable attention, the reference points and the backbone, refined references
detached between layers, tiny images, the 0.1x LR groups, a timm backbone by one config line, the
official recipes, and overfitting one batch."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

import detres
from detres.engine.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deformable_detr"
NUM_CLASSES, QUERIES = 3, 12


def tiny_deformable_detr(*, refine: bool = False, two_stage: bool = False, queries: int = QUERIES,
                         backbone: dict[str, Any] | None = None) -> torch.nn.Module:
    """ResNet-18 (res3..res5, stem frozen) + ChannelMapper(32, GN, one extra stride-64 level) + a
    1-encoder / 2-decoder deformable transformer (4 heads, 2 points), ``queries`` queries."""
    torch.manual_seed(0)
    node = {
        "_target_": "DeformableDETR",
        "input": {"min_size_test": 0, "size_divisibility": 32},
        "backbone": backbone or {"_target_": "ResNet", "depth": 18, "norm": "frozen_bn", "freeze_at": 1,
                                 "out_features": ["res3", "res4", "res5"]},
        "neck": {"_target_": "ChannelMapper", "in_features": None, "out_channels": 32, "norm": "gn",
                 "num_extra_levels": 1, "init": "xavier"},
        "head": {
            "_target_": "DeformableDETRHead", "num_classes": NUM_CLASSES, "num_queries": queries,
            "with_box_refine": refine, "two_stage": two_stage, "test_topk": 20,
            "position_encoding": {"_target_": "PositionEmbeddingSine", "normalize": True, "offset": -0.5},
            "transformer": {"_target_": "DeformableTransformer", "nhead": 4, "num_encoder_layers": 1,
                            "num_decoder_layers": 2, "ffn_dim": 64, "dropout": 0.0, "enc_n_points": 2,
                            "dec_n_points": 2},
            "matcher": {"_target_": "FocalHungarianMatcher"}, "criterion": {"_target_": "FocalSetCriterion"},
        },
    }
    return detres.build_model({"model": node})


def _images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


def _targets() -> list[dict[str, torch.Tensor]]:
    """Two boxes on the first image, none on the second."""
    return [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 60.0], [40.0, 30.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss"))


@pytest.mark.parametrize("refine,two_stage", [(False, False), (True, False), (True, True)])
def test_forward_raw_shapes(refine: bool, two_stage: bool) -> None:
    """The documented layout: pred_logits [B, Q, K], pred_boxes [B, Q, 4] in (0, 1), one aux entry per
    earlier decoder layer, two-stage: enc_outputs over all S tokens of the padded batch."""
    model = tiny_deformable_detr(refine=refine, two_stage=two_stage).eval()
    batch = model.preprocess(_images((96, 128), (70, 100)))
    with torch.no_grad():
        raw = model.forward_raw(batch)
    b, q, k = 2, QUERIES, NUM_CLASSES
    assert raw["pred_logits"].shape == (b, q, k) and raw["pred_boxes"].shape == (b, q, 4)
    assert 0 < raw["pred_boxes"].min() and raw["pred_boxes"].max() < 1
    assert [tuple(a["pred_logits"].shape) for a in raw["aux_outputs"]] == [(b, q, k)]
    assert [tuple(a["pred_boxes"].shape) for a in raw["aux_outputs"]] == [(b, q, 4)]
    # padded to 96x128: strides 8, 16, 32, 64 -> 12x16 + 6x8 + 3x4 + 2x2 tokens
    assert list(model.neck.output_shape()) == ["p3", "p4", "p5", "p6"]
    if two_stage:
        s = 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2
        assert raw["enc_outputs"]["pred_logits"].shape == (b, s, k)
        assert raw["enc_outputs"]["pred_boxes"].shape == (b, s, 4)
    else:
        assert "enc_outputs" not in raw
    assert len(model.head.bbox_embed[0].layers) == 3
    shared = model.head.bbox_embed[0] is model.head.bbox_embed[1]
    assert shared == (not refine)  # refinement: one box head per layer
    dets = model.postprocess(raw, batch, [(192, 256), (70, 100)])
    assert [tuple(d["boxes"].shape) for d in dets] == [(20, 4), (20, 4)]
    assert dets[1]["labels"].max() < k and dets[0]["scores"].max() <= 1


def _grad(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    return model.get_parameter(name).grad


def test_gradients_reach_deformable_attention_reference_points_and_backbone() -> None:
    model = tiny_deformable_detr().train()
    _total(model(_images((96, 128), (80, 112)), _targets())).backward()
    tr = "head.transformer."
    names = [f"{tr}{part}.layers.{i}.{attn}.{lin}.weight"
             for part, attn, i in (("encoder", "self_attn", 0), ("decoder", "cross_attn", 1))
             for lin in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")]
    # (level_embed only enters the encoder through the offset / weight projections, zero at init: its
    # gradient starts at the second step, as in the reference)
    names += [f"{tr}reference_points.weight", f"{tr}reference_points.bias",
              "head.query_embed.weight", "neck.extra_convs.0.0.weight", "neck.convs.0.0.weight",
              "backbone.layer1.0.conv1.weight", "backbone.layer4.1.conv2.weight"]
    for name in names:
        grad = _grad(model, name)
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.backbone.conv1.weight.grad is None  # freeze_at 1: the stem stays fixed


def test_refined_references_are_detached_between_layers() -> None:
    """Refinement: layer l's reference is layer l-1's box, detached (Zhu et al. 2021, A.4), so the
    last layer's outputs send no gradient into bbox_embed[0] through the reference, while the aux
    (layer-0) boxes do, and the last layer still trains its own box head and the sampling offsets."""
    model = tiny_deformable_detr(refine=True).train()
    batch = model.preprocess(_images((96, 128)))
    raw = model.forward_raw(batch)
    # (the box heads' last layers start at zero, so the logits carry the gradient into the decoder)
    (raw["pred_boxes"].sum() + raw["pred_logits"].sum()).backward()
    first, last = model.head.bbox_embed[0], model.head.bbox_embed[1]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in first.parameters())
    assert last.layers[-1].weight.grad.abs().sum() > 0
    offsets = model.head.transformer.decoder.layers[1].cross_attn.sampling_offsets.weight
    assert offsets.grad is not None and offsets.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.forward_raw(batch)["aux_outputs"][0]["pred_boxes"].sum().backward()
    assert first.layers[-1].weight.grad.abs().sum() > 0
    # the same, at the decoder itself: every reference it hands on is a leaf without grad
    run = model.head.transformer  # forward once more and inspect the decoder's references
    feats = model.neck(model.backbone(batch.tensor))
    levels = list(feats.values())
    masks = [torch.zeros(1, *f.shape[-2:], dtype=torch.bool) for f in levels]
    pos = [model.head.position_encoding(m) for m in masks]
    out = run(levels, masks, pos, model.head.query_embed.weight, bbox_embed=model.head.bbox_embed)
    assert out.init_reference.requires_grad and not out.references.requires_grad


@pytest.mark.parametrize("two_stage", [False, True])
def test_image_smaller_than_the_largest_stride(two_stage: bool) -> None:
    """20x24 px with a stride-64 level: every level keeps at least one cell; two-stage with more
    queries (30) than tokens keeps all tokens as proposals. Eval and training run."""
    model = tiny_deformable_detr(refine=two_stage, two_stage=two_stage, queries=30)
    images = _images((20, 24), (24, 20))
    with torch.no_grad():
        dets = model.eval()(images)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4 and torch.isfinite(dets[0]["scores"]).all()
    assert dets[0]["labels"].max() < NUM_CLASSES and torch.isfinite(dets[1]["boxes"]).all()
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 15.0, 18.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model.train()(images, targets)
    loss = _total(losses)
    assert torch.isfinite(loss)
    loss.backward()
    offsets = model.head.transformer.encoder.layers[0].self_attn.sampling_offsets.weight
    assert offsets.grad is not None and torch.isfinite(offsets.grad).all()


def test_param_name_lr_mult_groups() -> None:
    """The official recipe's groups: sampling offsets and reference points (and the backbone) at 0.1x;
    an unknown name part raises naming the key; null drops a part set by a base."""
    model = tiny_deformable_detr()
    cfg = detres.load_config(CONFIGS / "deformable_detr_r50_50e_coco.yaml")
    train = dict(cfg.train)
    opt = build_optimizer(cfg.optimizer, model, train)
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    base = 2e-4
    tr = "head.transformer."
    for name in (f"{tr}reference_points.weight", f"{tr}encoder.layers.0.self_attn.sampling_offsets.bias",
                 f"{tr}decoder.layers.1.cross_attn.sampling_offsets.weight", "backbone.layer2.0.conv1.weight"):
        assert lr_of[name] == pytest.approx(base * 0.1), name
    for name in (f"{tr}decoder.layers.1.cross_attn.attention_weights.weight", f"{tr}level_embed",
                 "head.query_embed.weight", "neck.convs.0.0.weight"):
        assert lr_of[name] == pytest.approx(base), name
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in opt.param_groups)
    with pytest.raises(ValueError, match=r"train\.param_name_lr_mult.*sampling_offset_typo"):
        build_optimizer(cfg.optimizer, model, {**train, "param_name_lr_mult": {"sampling_offset_typo": 0.1}})
    two = detres.load_config(CONFIGS / "deformable_detr_refine_two_stage_r50_50e_coco.yaml")
    assert dict(two.train.param_name_lr_mult) == {"sampling_offsets": 0.1, "reference_points": None}
    opt = build_optimizer(two.optimizer, tiny_deformable_detr(refine=True, two_stage=True), dict(two.train))
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert lr_of[f"{tr}decoder.layers.0.cross_attn.sampling_offsets.weight"] == pytest.approx(base * 0.1)
    assert lr_of[f"{tr}pos_trans.weight"] == pytest.approx(base)


def test_timm_backbone_by_one_config_line() -> None:
    """A timm ResNet-18 replaces the ResNet-50 with one override; the neck reads its levels and
    channels (in_features: null = every backbone output), nothing else changes."""
    cfg = detres.load_config(CONFIGS / "deformable_detr_r50_50e_coco.yaml", [
        "model.backbone={_target_: TimmBackbone, name: resnet18, out_indices: [2, 3, 4], weights: null}",
        "model.input.min_size_test=0", "model.head.num_queries=20",
        "model.head.transformer.num_encoder_layers=1", "model.head.transformer.num_decoder_layers=1"])
    torch.manual_seed(0)
    model = detres.build_model(cfg).eval()
    info = model.backbone.model.feature_info
    assert [s.channels for s in model.backbone.output_shape().values()] == info.channels() == [128, 256, 512]
    assert [c[0].in_channels for c in model.neck.convs] == [128, 256, 512]
    assert model.neck.extra_convs[0][0].in_channels == 512
    assert list(model.neck.output_shape()) == ["p3", "p4", "p5", "p6"]
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess(_images((64, 96))))
    assert raw["pred_logits"].shape == (1, 20, 80) and raw["pred_boxes"].shape == (1, 20, 4)


def test_official_recipes() -> None:
    """The three COCO configs carry the paper's recipe (Zhu et al. 2021, Sec. 5 / Appendix A.2) and
    differ only in refinement / two-stage."""
    cfgs = {name: detres.load_config(CONFIGS / f"deformable_detr_{name}r50_50e_coco.yaml")
            for name in ("", "refine_", "refine_two_stage_")}
    for name, cfg in cfgs.items():
        m, t = cfg.model, cfg.train
        assert (m.backbone.depth, m.backbone.norm, m.backbone.freeze_at) == (50, "frozen_bn", 2)
        assert (m.neck.norm, m.neck.num_extra_levels, m.neck.out_channels) == ("gn", 1, 256)
        tr = m.head.transformer
        assert (tr.num_encoder_layers, tr.num_decoder_layers, tr.ffn_dim, tr.dropout, tr.nhead) == (6, 6, 1024, 0.1, 8)
        assert (tr.enc_n_points, tr.dec_n_points, m.head.num_queries) == (4, 4, 300)
        assert cfg.optimizer._target_ == "torch.optim.AdamW"
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (2e-4, 1e-4)
        assert (t.batch_size, t.clip_grad, t.clip_grad_type, t.backbone_lr_mult) == (32, 0.1, "norm", 0.1)
        assert t.param_name_lr_mult.sampling_offsets == 0.1
        # 50 epochs with the drop at 40 over COCO train2017 (118287 images)
        assert t.max_iter == -(-50 * 118287 // 32) and list(cfg.lr_scheduler.milestones) == [-(-40 * 118287 // 32)]
        assert (m.head.with_box_refine, m.head.two_stage) == (name != "", name == "refine_two_stage_")


@pytest.mark.parametrize("refine,two_stage,freeze_at", [(False, False, 2), (True, True, 5)])
def test_overfit_one_batch(refine: bool, two_stage: bool, freeze_at: int) -> None:
    """Two images of different sizes, one without boxes: 60 AdamW steps cut the total loss >= 3x
    (~20x here; the plain model with res3..res5 training, the refine + two-stage one on a frozen
    backbone, which keeps it to a few CPU seconds)."""
    torch.manual_seed(0)
    backbone = {"_target_": "ResNet", "depth": 18, "norm": "frozen_bn", "freeze_at": freeze_at,
                "out_features": ["res3", "res4", "res5"]}
    model = tiny_deformable_detr(refine=refine, two_stage=two_stage, backbone=backbone).train()
    images = _images((64, 96), (96, 64), seed=1)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 8.0, 90.0, 40.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-4)
    start, cpu, first, last = time.time(), time.process_time(), None, None
    for _ in range(60):
        loss = _total(model(images, targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    print(f"overfit: loss {first:.3f} -> {last:.3f} ({first / last:.1f}x) in {time.time() - start:.0f}s "
          f"({time.process_time() - cpu:.0f} CPU s)")
    assert last * 3 <= first
