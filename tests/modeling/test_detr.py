"""DETR with tiny random weights: shapes, position encodings, masks, criterion, postprocess, batch
invariance of the eval padding policy, gradients, overfitting one batch, and the configs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import detres
from detres.modeling.heads.detr import PositionEmbeddingLearned, PositionEmbeddingSine, Transformer
from detres.modeling.layers import HungarianMatcher, assign
from detres.structures import ImageBatch


def tiny_detr(
    num_classes: int = 3, input: dict[str, Any] | None = None, dropout: float = 0.1, **head: Any
) -> torch.nn.Module:
    """ResNet-18 + ChannelMapper(64) + a 1-encoder / 2-decoder DETRHead with 10 queries."""
    torch.manual_seed(0)
    transformer = {"_target_": "Transformer", "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 2,
                   "ffn_dim": 128, "dropout": dropout}
    node = {
        "_target_": "DETR",
        "input": {"min_size_test": 0, "size_divisibility": 32, **(input or {})},
        "backbone": {"_target_": "ResNet", "depth": 18, "norm": "frozen_bn", "freeze_at": 1, "out_features": ["res5"]},
        "neck": {"_target_": "ChannelMapper", "in_features": ["res5"], "out_channels": 64},
        "head": {"_target_": "DETRHead", "num_classes": num_classes, "num_queries": 10,
                 "position_encoding": {"_target_": "PositionEmbeddingSine"}, "transformer": transformer,
                 "matcher": {"_target_": "HungarianMatcher"}, "criterion": {"_target_": "SetCriterion"}, **head},
    }
    return detres.build_model({"model": node})


def _images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


def test_forward_raw_shapes_and_ranges() -> None:
    model = tiny_detr().eval()
    batch = model.preprocess(_images((96, 128), (70, 100)))
    with torch.no_grad():
        raw = model.forward_raw(batch)
    assert raw["pred_logits"].shape == (2, 10, 4) and raw["pred_boxes"].shape == (2, 10, 4)
    assert 0 < raw["pred_boxes"].min() and raw["pred_boxes"].max() < 1
    assert len(raw["aux_outputs"]) == 1 and raw["aux_outputs"][0]["pred_logits"].shape == (2, 10, 4)
    dets = model.postprocess(raw, batch, [(192, 256), (70, 100)])
    assert [d["boxes"].shape for d in dets] == [(10, 4), (10, 4)]
    assert dets[0]["boxes"][:, 2].max() <= 256 and dets[0]["labels"].max() < 3


def test_sine_position_encoding() -> None:
    pe = PositionEmbeddingSine(num_pos_feats=8, normalize=True)
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    pos = pe(mask)
    assert pos.shape == (1, 16, 3, 5)
    # Channel 0 is sin(y) with y normalized to (0, 2*pi]: the last row sits at 2*pi (up to eps).
    y = torch.arange(1, 4, dtype=torch.float32) / 3 * 2 * math.pi
    torch.testing.assert_close(pos[0, 0, :, 0], torch.sin(y), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 9, 0, :], torch.cos(torch.arange(1, 6) / 5 * 2 * math.pi), atol=1e-5, rtol=0)
    # Normalized by the unpadded extent: padding does not move the positions of real cells.
    padded = torch.ones(1, 6, 7, dtype=torch.bool)
    padded[:, :3, :5] = False
    torch.testing.assert_close(pe(padded)[..., :3, :5], pos)


def test_learned_position_encoding() -> None:
    pe = PositionEmbeddingLearned(num_pos_feats=8, max_size=10)
    pos = pe(torch.zeros(2, 3, 4, dtype=torch.bool))
    assert pos.shape == (2, 16, 3, 4)
    torch.testing.assert_close(pos[0, :8, 1, 2], pe.col_embed.weight[2])
    torch.testing.assert_close(pos[1, 8:, 2, 0], pe.row_embed.weight[2])
    with pytest.raises(ValueError, match="max_size"):
        pe(torch.zeros(1, 11, 2, dtype=torch.bool))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_transformer_ignores_padded_content(pre_norm: bool) -> None:
    torch.manual_seed(0)
    tr = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=3, ffn_dim=64, dropout=0.0,
                     pre_norm=pre_norm).eval()
    assert (tr.encoder.norm is not None) == pre_norm
    src, pos = torch.randn(2, 32, 4, 5), torch.randn(2, 32, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, :, 3:] = True
    query = torch.randn(6, 32)
    hs, memory = tr(src, mask, query, pos)
    assert hs.shape == (3, 2, 6, 32) and memory.shape == (2, 32, 4, 5)
    src2 = src.clone()
    src2[1, :, :, 3:] = 100.0  # change only what the key padding mask hides
    hs2, memory2 = tr(src2, mask, query, pos)
    torch.testing.assert_close(hs2, hs)
    torch.testing.assert_close(memory2[1, :, :, :3], memory[1, :, :, :3])


def test_batch_invariance_per_image_policy() -> None:
    # (96,128) and (70,100) share a padded size (96x128) and run together; (160,64) runs alone.
    model = tiny_detr().eval()
    images = _images((96, 128), (70, 100), (160, 64))
    with torch.no_grad():
        together = model(images)
        alone = [model([im])[0] for im in images]
    for a, b in zip(together, alone):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4 * 160, rtol=0)


def test_batch_max_policy_is_the_reference_padding() -> None:
    # The reference pads every image to the batch's largest one; that stays available.
    model = tiny_detr(input={"size_divisibility": 1, "pad_policy_test": "batch_max"}).eval()
    images = _images((96, 128), (70, 100))
    with torch.no_grad():
        dets = model(images)
        batch = model.preprocess(images)
        assert batch.tensor.shape[-2:] == (96, 128) and bool(batch.pad_mask[1, 70:, :].all())
        expected = model.postprocess(model.forward_raw(batch), batch, [(96, 128), (70, 100)])
    for a, b in zip(dets, expected):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


def test_postprocess_topk() -> None:
    model = tiny_detr(num_classes=5).eval()
    batch = model.preprocess(_images((64, 96)))
    with torch.no_grad():
        raw = model.forward_raw(batch)
    (best,) = model.head.inference(raw, [(64, 96)])
    (top,) = model.head.inference(raw, [(64, 96)], topk=7)
    prob = raw["pred_logits"][0].softmax(-1)[:, :-1]
    assert top["scores"].shape == (7,) and bool((top["scores"][:-1] >= top["scores"][1:]).all())
    torch.testing.assert_close(top["scores"], prob.flatten().topk(7).values)
    assert top["scores"][0] == best["scores"].max()
    q = int(best["scores"].argmax())
    torch.testing.assert_close(top["boxes"][0], best["boxes"][q])


def test_targets_are_normalized_by_unpadded_size_and_crowd_dropped() -> None:
    model = tiny_detr()
    batch = ImageBatch.from_tensors([torch.zeros(3, 100, 200), torch.zeros(3, 50, 60)], 32)
    t = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1, 2]),
         "iscrowd": torch.tensor([False, True])}
    first = ImageBatch(batch.tensor[:1], batch.image_sizes[:1], batch.pad_mask[:1])
    (n,) = model.normalized_targets(first, [t])
    torch.testing.assert_close(n["boxes"], torch.tensor([[30 / 200, 40 / 100, 40 / 200, 40 / 100]]))
    assert n["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model.normalized_targets(batch, [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([3])}] * 2)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 120.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image with no boxes
    ]


def test_losses_names_weights_and_empty_image() -> None:
    model = tiny_detr(dropout=0.0).train()
    losses = model(_images((96, 128), (80, 112)), _targets())
    expected = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0")}
    assert {k for k in losses if k.startswith("loss")} == expected
    assert set(losses) - expected == {"class_error", "cardinality_error"}
    assert all(torch.isfinite(v) for v in losses.values())
    raw = model.forward_raw(model.preprocess(_images((96, 128), (80, 112)), resize=False))
    crit = model.head.criterion
    unweighted = crit(raw, model.normalized_targets(model.preprocess(_images((96, 128), (80, 112)), resize=False), _targets()))
    torch.testing.assert_close(losses["loss_bbox"], 5.0 * unweighted["loss_bbox"])
    torch.testing.assert_close(losses["loss_giou_0"], 2.0 * unweighted["loss_giou_0"])
    # The no-object class weighs eos_coef in the cross-entropy.
    assert crit.empty_weight[-1].item() == pytest.approx(0.1) and crit.empty_weight[:-1].eq(1).all()
    # No target at all: only the classification term is non-zero.
    empty = [_targets()[1], _targets()[1]]
    none = model(_images((96, 128), (80, 112)), empty)
    assert none["loss_bbox"].item() == 0 and none["loss_giou"].item() == 0 and none["loss_ce"].item() > 0


def test_gradients_reach_transformer_and_unfrozen_backbone() -> None:
    model = tiny_detr(dropout=0.0).train()
    losses = model(_images((96, 128), (80, 112)), _targets())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    for name in ("backbone.layer1.0.conv1.weight", "backbone.layer4.1.conv2.weight", "neck.convs.0.0.weight",
                 "head.transformer.encoder.layers.0.self_attn.in_proj_weight",
                 "head.transformer.decoder.layers.1.multihead_attn.in_proj_weight", "head.transformer.decoder.norm.weight",
                 "head.query_embed.weight", "head.class_embed.weight", "head.bbox_embed.layers.2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.backbone.conv1.weight.grad is None  # freeze_at 1: the stem stays fixed


@pytest.mark.slow
def test_overfit_one_batch() -> None:
    torch.manual_seed(0)
    model = tiny_detr(dropout=0.0).train()
    images = _images((256, 224), (192, 256), seed=1)
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 140.0, 200.0], [120.0, 40.0, 210.0, 120.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[40.0, 50.0, 200.0, 170.0]]), "labels": torch.tensor([1])},
    ]
    params = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone")]},
              {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone")], "lr": 1e-4}]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    start, first, last = time.time(), None, None
    for _ in range(60):
        losses = model(images, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    print(f"overfit: loss {first:.3f} -> {last:.3f} ({first / last:.1f}x) in {time.time() - start:.0f}s")
    assert last * 3 <= first


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detr"


def test_configs_load_with_the_official_recipe() -> None:
    r50 = detres.load_config(CONFIGS / "detr_r50_150e_coco.yaml")
    assert r50.train.max_iter == math.ceil(150 * 118287 / 64)
    assert r50.lr_scheduler.milestones == [math.ceil(100 * 118287 / 64)]
    assert r50.model.head.num_classes == 80 and r50.optimizer.lr == 1e-4 and r50.train.clip_grad == 0.1
    long = detres.load_config(CONFIGS / "detr_r50_500e_coco.yaml")
    assert long.train.max_iter == math.ceil(500 * 118287 / 64)
    assert long.lr_scheduler.milestones == [math.ceil(400 * 118287 / 64)]
    assert detres.load_config(CONFIGS / "detr_r50_dc5_500e_coco.yaml").model.backbone.dilation == 2
    assert detres.load_config(CONFIGS / "detr_r101_500e_coco.yaml").model.backbone.depth == 101


def test_config_model_node_builds_shrunk() -> None:
    cfg = detres.load_config(CONFIGS / "detr_r50_dc5_500e_coco.yaml", overrides=[
        "model.backbone.depth=18", "model.head.transformer.num_encoder_layers=1",
        "model.head.transformer.num_decoder_layers=1", "model.head.transformer.ffn_dim=64",
        "model.neck.out_channels=64", "model.head.num_queries=5"])
    model = detres.build_model(cfg).eval()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess(_images((64, 96)), resize=False))
    assert raw["pred_logits"].shape == (1, 5, 81)
    assert model.neck.output_shape()["p4"].stride == 16  # DC5: res5 at stride 16


def test_nested_nodes_set_depth_and_matcher_costs() -> None:
    # Transformer depth, matcher costs and loss weights are keys of the head's child nodes.
    cfg = detres.load_config(CONFIGS / "detr_r50_150e_coco.yaml", overrides=[
        "num_classes=3", "model.backbone.depth=18", "model.neck.out_channels=64", "model.head.num_queries=8",
        "model.head.transformer.nhead=4", "model.head.transformer.num_encoder_layers=1",
        "model.head.transformer.num_decoder_layers=3", "model.head.transformer.ffn_dim=64",
        "model.head.transformer.dropout=0.0", "model.head.matcher.cost_giou=1.0", "model.head.criterion.eos_coef=0.2"])
    torch.manual_seed(0)
    model = detres.build_model(cfg)
    head = model.head
    assert len(head.transformer.encoder.layers) == 1 and len(head.transformer.decoder.layers) == 3
    # The width follows the neck: d_model and the position encoding's num_pos_feats are passed down.
    assert head.transformer.d_model == 64 and head.position_encoding.num_pos_feats == 32
    matcher = head.criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (1.0, 5.0, 1.0)
    assert head.criterion.num_classes == 3 and head.criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.2])
    assert head.class_embed.out_features == 4 and head.query_embed.weight.shape == (8, 64)

    model.train()
    images = _images((96, 128), (80, 112))
    batch = model.preprocess(images, resize=False)
    raw = model.forward_raw(batch)
    assert len(raw["aux_outputs"]) == 2 and raw["aux_outputs"][1]["pred_boxes"].shape == (2, 8, 4)
    targets = model.normalized_targets(batch, _targets())
    # The criterion matches with the configured costs, not DETR's defaults (GIoU 2).
    args = (raw["pred_logits"][0].detach(), raw["pred_boxes"][0].detach(), targets[0]["labels"], targets[0]["boxes"])
    cost = matcher.cost_matrix(*args)
    torch.testing.assert_close(cost, HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=1.0).cost_matrix(*args))
    assert not torch.allclose(cost, HungarianMatcher().cost_matrix(*args))
    rows, cols = head.criterion.matcher(raw, targets)[0]
    expected_rows, expected_cols = assign(cost)
    assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)
    losses = model(images, _targets())
    expected = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0", "_1")}
    assert {k for k in losses if k.startswith("loss")} == expected
    total = sum(v for k, v in losses.items() if k.startswith("loss"))
    assert torch.isfinite(total)
    total.backward()
    assert model.head.transformer.decoder.layers[2].linear1.weight.grad.abs().sum() > 0


def test_learned_position_encoding_node_keeps_checkpoint_names() -> None:
    model = tiny_detr(position_encoding={"_target_": "PositionEmbeddingLearned", "max_size": 20})
    keys = set(model.state_dict())
    # detres/checkpoint/detr.py maps the reference's backbone.1.{row,col}_embed.weight here.
    assert {"head.position_encoding.row_embed.weight", "head.position_encoding.col_embed.weight"} <= keys
    assert model.head.position_encoding.row_embed.weight.shape == (20, 32)
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(model.preprocess(_images((96, 128))))
    assert raw["pred_logits"].shape == (1, 10, 4)


def test_state_dict_names_are_the_reference_layout() -> None:
    keys = set(tiny_detr().state_dict())
    for name in ("head.query_embed.weight", "head.class_embed.weight", "head.class_embed.bias",
                 "head.bbox_embed.layers.0.weight", "head.bbox_embed.layers.2.bias",
                 "head.transformer.encoder.layers.0.self_attn.in_proj_weight",
                 "head.transformer.decoder.layers.1.multihead_attn.out_proj.weight", "head.transformer.decoder.norm.bias"):
        assert name in keys, name
    # The matcher and criterion hold no tensors of their own in checkpoints.
    assert not any(k.startswith("head.criterion") for k in keys)


def test_child_keys_the_head_passes_down_are_checked() -> None:
    bad_width = {"_target_": "Transformer", "d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 1}
    with pytest.raises(ValueError, match=r"DETRHead.transformer.d_model is 32 but the head passes 64.*out_channels"):
        tiny_detr(transformer=bad_width)
    with pytest.raises(ValueError, match=r"DETRHead.criterion.num_classes is 7 but the head passes 3"):
        tiny_detr(criterion={"_target_": "SetCriterion", "num_classes": 7})
    with pytest.raises(ValueError, match="model.head.matcher"):
        tiny_detr(criterion={"_target_": "SetCriterion", "matcher": {"_target_": "HungarianMatcher"}})
    with pytest.raises(TypeError, match=r"DETRHead.position_encoding must be a node"):
        tiny_detr(position_encoding="sine")


def test_moved_keys_point_at_real_keys() -> None:
    # Every flat key of the former head names a key that the child node's class accepts.
    from detres.config.validate import accepted_keys
    from detres.modeling.heads.detr import DETRHead

    base = detres.load_config(CONFIGS / "detr_r50_150e_coco.yaml").model.head
    head_keys = set(accepted_keys("DETRHead"))
    assert len(DETRHead.moved_keys) == 15
    for old, new in DETRHead.moved_keys.items():
        child, key = new.split(".")
        assert old not in head_keys and child in head_keys, old
        assert key in accepted_keys(base[child]["_target_"]), new
