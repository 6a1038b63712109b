"""detres RT-DETR (ResNet-vd + HybridEncoder + RTDETRHead) against transformers' RTDetrV2ForObjectDetection
on the same weights: the key map covers every tensor, raw outputs and detections agree."""
from __future__ import annotations

import sys

import pytest
import torch

import detres
from detres.benchmark.hf_rtdetr import (
    HFRTDetrPipeline,
    build_hf_rtdetr,
    build_hf_rtdetr_processor,
    compare_rtdetr_raw,
    randomize_rtdetr_weights,
    to_hf_rtdetr_state_dict,
)
from detres.utils.compare import compare_detections
from detres.utils.extras import MissingExtraError

CONFIG = "configs/_base_/rtdetr.yaml"
SMALL = ["model.backbone.weights=null", "model.head.matcher=null", "model.head.criterion=null",
         "model.backbone.depth=18", "model.neck.expansion=0.5", "model.neck.hidden_dim=64",
         "model.neck.dim_feedforward=128", "model.neck.nhead=4", "model.head.transformer.nhead=4",
         "model.head.transformer.num_decoder_layers=2", "model.head.transformer.ffn_dim=128",
         "model.head.num_queries=30", "model.head.test_topk=30", "model.input.fixed_size_test=[160,160]"]


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"detres\[benchmark\]"):
        build_hf_rtdetr(torch.nn.Module())  # fails on the import, before reading the model


def test_state_dict_names():
    z = torch.zeros(1)
    sd = {"backbone.conv1.3.weight": z, "backbone.bn1.running_var": z, "backbone.layer1.0.downsample.1.weight": z,
          "backbone.layer3.0.downsample.2.bias": z, "backbone.layer2.1.bn3.weight": z,
          "neck.input_proj.2.norm.bias": z, "neck.encoder.0.layers.0.self_attn.in_proj_bias": torch.arange(6.0),
          "neck.encoder.0.layers.0.norm2.weight": z, "neck.pan_blocks.1.bottlenecks.2.conv1.conv.weight": z,
          "head.transformer.input_proj.1.conv.weight": z, "head.transformer.decoder.layers.2.norm2.weight": z,
          "head.transformer.decoder.layers.0.cross_attn.value_proj.bias": z, "head.transformer.dec_score_head.3.bias": z,
          "head.transformer.enc_output.proj.weight": z, "head.transformer.query_pos_head.layers.1.bias": z,
          "head.denoising.label_enc.weight": z, "backbone.layer4.0.bn1.num_batches_tracked": z}
    out = to_hf_rtdetr_state_dict(sd)
    bb = "model.backbone.model."
    assert set(out) == {
        bb + "embedder.embedder.1.convolution.weight", bb + "embedder.embedder.2.normalization.running_var",
        bb + "encoder.stages.0.layers.0.shortcut.convolution.weight",
        bb + "encoder.stages.2.layers.0.shortcut.1.normalization.bias",
        bb + "encoder.stages.1.layers.1.layer.2.normalization.weight",
        "model.encoder_input_proj.2.1.bias", "model.encoder.aifi.0.layers.0.self_attn.q_proj.bias",
        "model.encoder.aifi.0.layers.0.self_attn.k_proj.bias", "model.encoder.aifi.0.layers.0.self_attn.v_proj.bias",
        "model.encoder.aifi.0.layers.0.final_layer_norm.weight", "model.encoder.pan_blocks.1.bottlenecks.2.conv1.conv.weight",
        "model.decoder_input_proj.1.0.weight", "model.decoder.layers.2.encoder_attn_layer_norm.weight",
        "model.decoder.layers.0.encoder_attn.value_proj.bias", "class_embed.3.bias", "model.decoder.class_embed.3.bias",
        "model.enc_output.0.weight", "model.decoder.query_pos_head.layers.1.bias", "model.denoising_class_embed.weight"}
    assert out["model.encoder.aifi.0.layers.0.self_attn.v_proj.bias"].tolist() == [4.0, 5.0]
    with pytest.raises(KeyError, match="head.transformer.bogus"):
        to_hf_rtdetr_state_dict({"head.transformer.bogus": z})


@pytest.mark.slow  # ~35 s on the loaded 2-core machine (transformers' import and two models)
def test_same_outputs_and_detections_as_transformers():
    pytest.importorskip("transformers", reason="transformers is the benchmark extra: pip install 'detres[benchmark]'")
    cfg = detres.load_config(CONFIG, overrides=SMALL)
    torch.manual_seed(0)
    model = detres.build_model(cfg).eval()
    assert randomize_rtdetr_weights(model, 0) > 100
    hf = build_hf_rtdetr(model)  # strict: every HF tensor is mapped
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 160, 160), generator=g, dtype=torch.uint8)
    raw = compare_rtdetr_raw(model, hf, model.preprocess([image]))
    assert raw["proposals_equal"], raw
    assert raw["logits_max_diff"] < 1e-4 and raw["boxes_max_diff"] < 1e-5, raw
    pipe = HFRTDetrPipeline(hf, build_hf_rtdetr_processor(cfg.model.input))
    with torch.inference_mode():
        ours, theirs = model([image]), pipe([image])
    check = compare_detections(ours, theirs, label_offset=0)
    assert check["identical"] and check["detections"] == [30], check
