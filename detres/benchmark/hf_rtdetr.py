"""Hugging Face ``transformers``' ``RTDetrV2ForObjectDetection`` on the same weights as a detres RT-DETR:
the reference that ``tools/benchmark.py model --compare transformers`` times for an RT-DETR config.

Benchmark code only (the ``benchmark`` extra); ``transformers`` is imported when a function here
runs. The detres state dict (ResNet-vd + HybridEncoder + RTDETRHead) is renamed into the HF one:

- backbone: detres' torchvision/timm-style ResNet-vd -> HF's ``RTDetrResNet`` under
  ``model.backbone.model``: the stem ``conv1.{0,3,6}`` / ``conv1.{1,4}`` + ``bn1`` -> ``embedder.embedder.
  {0,1,2}.{convolution,normalization}``; ``layerK.N.convJ`` / ``bnJ`` -> ``encoder.stages.{K-1}.layers.N.
  layer.{J-1}.{convolution,normalization}``; the shortcut ``downsample.{1,2}`` (after the avg-pool slot
  0) -> ``shortcut.{convolution,normalization}`` in stage 0 (no pool there) and ``shortcut.1.*`` after.
- neck: ``input_proj.i.{conv,norm}`` -> ``model.encoder_input_proj.i.{0,1}``; AIFI ``encoder.k`` ->
  ``model.encoder.aifi.k`` (packed ``in_proj`` split into q / k / v, HF's norm and FFN names); the CCFF
  convs keep their names under ``model.encoder``.
- head: ``input_proj`` -> ``model.decoder_input_proj``; decoder layers with HF's names; per-layer heads
  ``dec_score_head`` / ``dec_bbox_head`` -> ``class_embed`` / ``bbox_embed`` both at the top and under
  ``model.decoder`` (HF ties them); ``denoising.label_enc`` -> ``model.denoising_class_embed``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detres.benchmark import hf_deformable
from detres.structures import ImageBatch
from detres.utils.extras import import_extra

__all__ = ["hf_rtdetr_config_kwargs", "to_hf_rtdetr_state_dict", "build_hf_rtdetr", "build_hf_rtdetr_processor",
           "randomize_rtdetr_weights", "compare_rtdetr_raw", "HFRTDetrPipeline"]

_AIFI = {"self_attn.out_proj.": "self_attn.o_proj.", "norm1.": "self_attn_layer_norm.", "linear1.": "mlp.fc1.",
         "linear2.": "mlp.fc2.", "norm2.": "final_layer_norm."}
_DEC = {"cross_attn.": "encoder_attn.", "norm1.": "self_attn_layer_norm.", "self_attn.out_proj.": "self_attn.o_proj.",
        "norm2.": "encoder_attn_layer_norm.", "linear1.": "mlp.fc1.", "linear2.": "mlp.fc2.", "norm3.": "final_layer_norm."}
_STEM = {"conv1.0.": "0.convolution.", "conv1.1.": "0.normalization.", "conv1.3.": "1.convolution.",
         "conv1.4.": "1.normalization.", "conv1.6.": "2.convolution.", "bn1.": "2.normalization."}
_NECK_KEPT = ("lateral_convs.", "fpn_blocks.", "downsample_convs.", "pan_blocks.")


def _rename(rest: str, table: dict[str, str], key: str) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(f"to_hf_rtdetr_state_dict: no transformers name for {key}")


def _attention(out: dict[str, Tensor], pre: str, rest: str, v: Tensor, table: dict[str, str], key: str) -> None:
    """One transformer layer's tensor; a packed ``self_attn.in_proj_*`` becomes q / k / v."""
    if rest in ("self_attn.in_proj_weight", "self_attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
            out[f"{pre}self_attn.{name}.{kind}"] = part
    else:
        out[pre + _rename(rest, table, key)] = v


def _backbone_key(rest: str, key: str) -> str:
    """A detres ResNet-vd key below ``backbone.`` -> the HF ``RTDetrResNet`` key below ``model.backbone.model.``."""
    if rest.startswith(("conv1.", "bn1.")):
        return "embedder.embedder." + _rename(rest, _STEM, key)
    stage, block, rest = rest.split(".", 2)
    if not stage.startswith("layer"):
        raise KeyError(f"to_hf_rtdetr_state_dict: no transformers name for {key}")
    k = int(stage[len("layer"):]) - 1
    pre = f"encoder.stages.{k}.layers.{block}."
    if rest.startswith("downsample."):
        _, idx, tail = rest.split(".", 2)
        part = {"1": "convolution", "2": "normalization"}.get(idx)
        if part is None:
            raise KeyError(f"to_hf_rtdetr_state_dict: no transformers name for {key}")
        return pre + ("shortcut." if k == 0 else "shortcut.1.") + f"{part}.{tail}"
    name, tail = rest.split(".", 1)
    if name[:-1] not in ("conv", "bn") or not name[-1].isdigit():
        raise KeyError(f"to_hf_rtdetr_state_dict: no transformers name for {key}")
    part = "convolution" if name.startswith("conv") else "normalization"
    return pre + f"layer.{int(name[-1]) - 1}.{part}.{tail}"


def to_hf_rtdetr_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detres RT-DETR state dict -> the keys of ``transformers.RTDetrV2ForObjectDetection`` (less
    the decoder's constant ``n_points_scale`` buffers, which HF builds from its config)."""
    out: dict[str, Tensor] = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked") or key.startswith("backbone.fc."):
            continue
        if key.startswith("backbone."):
            out["model.backbone.model." + _backbone_key(key[len("backbone."):], key)] = v
        elif key.startswith("neck.input_proj."):
            i, part, tail = key[len("neck.input_proj."):].split(".", 2)
            out[f"model.encoder_input_proj.{i}.{ {'conv': 0, 'norm': 1}[part] }.{tail}"] = v
        elif key.startswith("neck.encoder."):
            k, _, j, rest = key[len("neck.encoder."):].split(".", 3)
            _attention(out, f"model.encoder.aifi.{k}.layers.{j}.", rest, v, _AIFI, key)
        elif key.startswith("neck.") and key[len("neck."):].startswith(_NECK_KEPT):
            out["model.encoder." + key[len("neck."):]] = v
        elif key.startswith("head.transformer.input_proj."):
            i, part, tail = key[len("head.transformer.input_proj."):].split(".", 2)
            out[f"model.decoder_input_proj.{i}.{ {'conv': 0, 'norm': 1}[part] }.{tail}"] = v
        elif key.startswith("head.transformer.decoder.layers."):
            i, rest = key[len("head.transformer.decoder.layers."):].split(".", 1)
            _attention(out, f"model.decoder.layers.{i}.", rest, v, _DEC, key)
        elif key.startswith(("head.transformer.dec_score_head.", "head.transformer.dec_bbox_head.")):
            rest = key[len("head.transformer.dec_"):]
            name = ("class_embed." + rest[len("score_head."):] if rest.startswith("score_head.")
                    else "bbox_embed." + rest[len("bbox_head."):])
            out[name] = v
            out["model.decoder." + name] = v
        elif key.startswith("head.transformer.query_pos_head."):
            out["model.decoder." + key[len("head.transformer."):]] = v
        elif key.startswith("head.transformer.enc_output."):
            part, tail = key[len("head.transformer.enc_output."):].split(".", 1)
            out[f"model.enc_output.{ {'proj': 0, 'norm': 1}[part] }.{tail}"] = v
        elif key.startswith(("head.transformer.enc_score_head.", "head.transformer.enc_bbox_head.")):
            out["model." + key[len("head.transformer."):]] = v
        elif key.startswith("head.denoising.label_enc."):
            out["model.denoising_class_embed." + key[len("head.denoising.label_enc."):]] = v
        else:
            raise KeyError(f"to_hf_rtdetr_state_dict: no transformers name for {key}")
    return out


def hf_rtdetr_config_kwargs(model: nn.Module) -> dict[str, Any]:
    """``RTDetrV2Config`` arguments for a built detres ``RTDETR`` (ResNet-vd + HybridEncoder + RTDETRHead);
    raises ValueError naming what transformers cannot mirror."""
    transformers = import_extra("transformers", "--compare transformers")
    backbone, neck, head = model.backbone, model.neck, model.head
    tr = head.transformer
    if type(backbone).__name__ != "ResNet" or getattr(backbone, "variant", "b") != "d":
        raise ValueError("--compare transformers on RT-DETR needs model.backbone ResNet with variant d "
                         "(transformers builds its RTDetrResNet, a ResNet-vd)")
    depths = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
    if backbone.depth not in depths:
        raise ValueError(f"--compare transformers: model.backbone.depth {backbone.depth} has no RTDetrResNet; use 18/34/50/101")
    basic = backbone.depth < 50
    if basic and not getattr(backbone, "first_block_projection", False):
        raise ValueError("--compare transformers: RTDetrResNet-18/34 projects the first block's shortcut; "
                         "set model.backbone.first_block_projection=true")
    widths = [64, 128, 256, 512] if basic else [256, 512, 1024, 2048]
    outs = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}
    bb = transformers.RTDetrResNetConfig(
        depths=depths[backbone.depth], hidden_sizes=widths, layer_type="basic" if basic else "bottleneck",
        out_indices=[outs[f] for f in neck.in_features])
    aifi = neck.encoder[0].layers[0] if len(neck.encoder) else None
    dec = tr.decoder.layers[0]
    acts = {"ReLU": "relu", "GELU": "gelu", "SiLU": "silu"}
    shapes = backbone.output_shape()
    n_points = dec.cross_attn.n_points
    return dict(
        backbone_config=bb, num_labels=head.num_classes, encoder_hidden_dim=neck.hidden_dim,
        encoder_in_channels=[shapes[f].channels for f in neck.in_features],
        feat_strides=[shapes[f].stride for f in neck.in_features], encoder_layers=neck.num_encoder_layers,
        encoder_ffn_dim=aifi.linear1.out_features if aifi is not None else 1024,
        encoder_attention_heads=aifi.self_attn.num_heads if aifi is not None else 8,
        encode_proj_layers=list(neck.use_encoder_idx), positional_encoding_temperature=int(neck.pe_temperature),
        encoder_activation_function=acts[type(aifi.activation).__name__] if aifi is not None else "gelu",
        activation_function=acts[type(neck.lateral_convs[0].act).__name__] if len(neck.lateral_convs) else "silu",
        hidden_expansion=neck.fpn_blocks[0].conv1.conv.out_channels / neck.hidden_dim if len(neck.fpn_blocks) else 1.0,
        d_model=tr.d_model, num_queries=head.num_queries, decoder_in_channels=[neck.hidden_dim] * len(neck.in_features),
        decoder_ffn_dim=dec.linear1.out_features, num_feature_levels=len(neck.in_features),
        decoder_n_levels=len(neck.in_features), decoder_n_points=n_points if isinstance(n_points, int) else list(n_points),
        decoder_layers=len(tr.decoder.layers), decoder_attention_heads=dec.cross_attn.n_heads,
        decoder_activation_function=acts[type(dec.act).__name__] if isinstance(dec.act, nn.Module) else dec.act.__name__,
        num_denoising=head.denoising.num_dn_queries if head.denoising is not None else 0,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, auxiliary_loss=head.aux_loss,
    )


def build_hf_rtdetr(model: nn.Module) -> nn.Module:
    """``RTDetrV2ForObjectDetection`` with ``model``'s architecture and weights, eval mode; the load is
    strict: every HF tensor comes from ``model`` but the constant ``n_points_scale`` buffers."""
    transformers = import_extra("transformers", "--compare transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.RTDetrV2Config(**hf_rtdetr_config_kwargs(model))
    hf = transformers.RTDetrV2ForObjectDetection(config).eval()
    sd = to_hf_rtdetr_state_dict(model.state_dict())
    return hf_deformable.load_converted(hf, sd, "RT-DETRv2", own_buffers=("n_points_scale",))


def build_hf_rtdetr_processor(input_cfg: Any) -> Any:
    """``RTDetrImageProcessor`` with the detres ``input`` block's fixed test size (no mean / std)."""
    transformers = import_extra("transformers", "--compare transformers")
    if input_cfg.get("fixed_size_test") is None:
        raise ValueError("--compare transformers on RT-DETR needs model.input.fixed_size_test (RT-DETR's resize)")
    h, w = (int(v) for v in input_cfg.fixed_size_test)
    return transformers.RTDetrImageProcessor(size={"height": h, "width": w}, do_normalize=False)


@torch.no_grad()
def randomize_rtdetr_weights(model: nn.Module, seed: int) -> int:
    """Seeded random weights where a fresh RT-DETR is degenerate, so that a comparison checks something:
    norm statistics and affine, sampling offsets and attention weights (``hf_deformable.randomize_weights``),
    the box heads' last layers (zero at init: boxes = anchors) and the class heads. Returns the tensors set."""
    n = hf_deformable.randomize_weights(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    tr = model.head.transformer
    for mlp in [tr.enc_bbox_head, *tr.dec_bbox_head]:
        mlp.layers[-1].weight.copy_(torch.randn(mlp.layers[-1].weight.shape, generator=g) * 0.01)
        n += 1
    for lin in [tr.enc_score_head, *tr.dec_score_head]:
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
        n += 1
    return n


def _hf_topk(out: Any, k: int) -> Tensor:
    """HF's selected encoder anchors: the top-k of the per-anchor max class logit."""
    return torch.topk(out.enc_outputs_class.max(-1).values, k, dim=1)[1]


def compare_rtdetr_raw(model: nn.Module, hf: nn.Module, batch: ImageBatch) -> dict[str, Any]:
    """Max |diff| of ``pred_logits`` / ``pred_boxes`` between detres ``forward_raw`` and the HF model on
    the same batch; ``same_proposals_*``: detres fed HF's top-k anchors (``select_indices``), which rules
    out reorderings of near-tied scores; ``proposals_equal``: whether both picked the same anchors."""
    with torch.inference_mode():
        out = hf(pixel_values=batch.tensor)
        ours = model.forward_raw(batch)
        topk = _hf_topk(out, ours["pred_logits"].shape[1])
        same = model.forward_raw(batch, select_indices=topk)
        ours_topk = model.dense(batch.tensor, batch.pad_mask)[-1]  # the selected anchors' indices [B, Q]
    return {"logits_max_diff": float((ours["pred_logits"] - out.logits).abs().max()),
            "boxes_max_diff": float((ours["pred_boxes"] - out.pred_boxes).abs().max()),
            "proposals_equal": bool(torch.equal(ours_topk.sort(1)[0], topk.sort(1)[0])),
            "proposals_same_order": bool(torch.equal(ours_topk, topk)),
            "same_proposals_logits_max_diff": float((same["pred_logits"] - out.logits).abs().max()),
            "same_proposals_boxes_max_diff": float((same["pred_boxes"] - out.pred_boxes).abs().max())}


class HFRTDetrPipeline(nn.Module):
    """What a transformers user runs per call: ``RTDetrImageProcessor`` (resize to the fixed size,
    scale to [0, 1]), the model, ``post_process_object_detection`` (top-Q sigmoid scores over queries x
    classes, no threshold); returns detres' per-image ``{"boxes" xyxy, "scores", "labels"}`` (0..K-1)."""

    def __init__(self, hf: nn.Module, processor: Any) -> None:
        super().__init__()
        self.hf, self.processor = hf, processor

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        inputs = self.processor(images=images, return_tensors="pt")
        out = self.hf(pixel_values=inputs["pixel_values"])
        sizes = [tuple(im.shape[-2:]) for im in images]
        res = self.processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)
        return [{"boxes": r["boxes"], "scores": r["scores"], "labels": r["labels"]} for r in res]
