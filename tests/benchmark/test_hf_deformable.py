"""detres Deformable DETR (two-stage + box refinement) against transformers' DeformableDetrForObjectDetection
on the same weights: the converter maps every tensor, raw outputs and detections agree."""
from __future__ import annotations

import sys

import pytest
import torch

import detres
from detres.benchmark.hf_deformable import (
    HFDeformablePipeline,
    build_hf_deformable,
    build_hf_processor,
    compare_raw,
    randomize_weights,
    to_hf_state_dict,
)
from detres.utils.compare import compare_detections
from detres.utils.extras import MissingExtraError

CONFIG = "configs/deformable_detr/deformable_detr_refine_two_stage_r50_50e_coco.yaml"
SMALL = ["num_classes=91", "model.backbone.weights=null", "model.head.matcher=null", "model.head.criterion=null",
         "model.input.min_size_test=0", "model.head.num_queries=40", "model.head.test_topk=50",
         "model.head.transformer.num_encoder_layers=1", "model.head.transformer.num_decoder_layers=2",
         "model.head.transformer.ffn_dim=256"]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = detres.build_model(detres.load_config(CONFIG, overrides=SMALL)).eval()
    assert randomize_weights(model, 0) > 100
    return model


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"detres\[benchmark\]"):
        build_hf_deformable(torch.nn.Module())  # fails on the import, before reading the model


def test_state_dict_names():
    sd = {"backbone.layer1.0.conv1.weight": torch.zeros(1), "neck.extra_convs.0.1.bias": torch.zeros(1),
          "head.transformer.decoder.layers.1.self_attn.in_proj_weight": torch.arange(6.0)[:, None],
          "head.transformer.decoder.layers.1.norm3.weight": torch.zeros(1), "head.class_embed.6.bias": torch.zeros(1)}
    out = to_hf_state_dict(sd, num_backbone_levels=3)
    assert set(out) == {"model.backbone.model.layer1.0.conv1.weight", "model.input_proj.3.1.bias",
                        "model.decoder.layers.1.self_attn.q_proj.weight", "model.decoder.layers.1.self_attn.k_proj.weight",
                        "model.decoder.layers.1.self_attn.v_proj.weight", "model.decoder.layers.1.final_layer_norm.weight",
                        "class_embed.6.bias", "model.decoder.class_embed.6.bias"}
    assert out["model.decoder.layers.1.self_attn.k_proj.weight"].flatten().tolist() == [2.0, 3.0]
    with pytest.raises(KeyError, match="head.transformer.bogus"):
        to_hf_state_dict({"head.transformer.bogus": torch.zeros(1)})


@pytest.mark.slow  # ~20 s on 2 idle cores (two R50 models at 320x427)
def test_same_outputs_and_detections_as_transformers():
    pytest.importorskip("transformers", reason="transformers is the benchmark extra: pip install 'detres[benchmark]'")
    model = _model()
    hf = build_hf_deformable(model)  # strict: every HF tensor is mapped
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 320, 427), generator=g, dtype=torch.uint8)
    raw = compare_raw(model, hf, model.preprocess([image]))
    assert raw["proposals_equal"]
    assert raw["logits_max_diff"] < 1e-4 and raw["boxes_max_diff"] < 1e-5, raw
    assert raw["enc_logits_max_diff"] < 1e-4, raw
    pipe = HFDeformablePipeline(hf, build_hf_processor(detres.load_config(CONFIG, overrides=SMALL).model.input), top_k=50)
    with torch.inference_mode():
        ours, theirs = model([image]), pipe([image])
    check = compare_detections(ours, theirs, label_offset=0)
    assert check["identical"] and check["detections"] == [50], check
