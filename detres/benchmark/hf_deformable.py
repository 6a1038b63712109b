"""Hugging Face ``transformers``' ``DeformableDetrForObjectDetection`` on the same weights as a detres
Deformable DETR: the reference that ``tools/benchmark.py model --compare transformers`` times.

Benchmark code only (the ``benchmark`` extra); ``transformers`` is imported when a function here
runs. The detres state dict (the official layout, see ``detres.checkpoint``) is renamed into the HF
one: ResNet under ``model.backbone.model`` (timm's ``resnet50``, the same torchvision names, frozen BN
eps 1e-5), ``neck.convs`` / ``neck.extra_convs`` -> ``model.input_proj``, encoder / decoder layers
with HF's norm and FFN names, the decoder self-attention's packed ``in_proj`` split into
``q_proj`` / ``k_proj`` / ``v_proj``, and the per-layer heads both at the top and under
``model.decoder`` (HF ties them).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detres.structures import ImageBatch
from detres.utils.extras import import_extra

__all__ = ["hf_config_kwargs", "to_hf_state_dict", "build_hf_deformable", "build_hf_processor",
           "randomize_weights", "hf_raw_outputs", "compare_raw", "HFDeformablePipeline"]

_ENC = {"self_attn.": "self_attn.", "norm1.": "self_attn_layer_norm.", "linear1.": "mlp.fc1.",
        "linear2.": "mlp.fc2.", "norm2.": "final_layer_norm."}
_DEC = {"cross_attn.": "encoder_attn.", "norm1.": "encoder_attn_layer_norm.", "self_attn.out_proj.": "self_attn.o_proj.",
        "norm2.": "self_attn_layer_norm.", "linear1.": "mlp.fc1.", "linear2.": "mlp.fc2.", "norm3.": "final_layer_norm."}
_TRANSFORMER_TOP = ("level_embed", "enc_output.", "enc_output_norm.", "pos_trans.", "pos_trans_norm.", "reference_points.")


def _rename(rest: str, table: dict[str, str], where: str) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(f"to_hf_state_dict: no transformers name for {where}{rest}")


def to_hf_state_dict(sd: dict[str, Tensor], num_backbone_levels: int = 3) -> dict[str, Tensor]:
    """A detres Deformable DETR state dict (ResNet + ChannelMapper + DeformableDETRHead) -> the keys of
    ``transformers.DeformableDetrForObjectDetection``. ``num_backbone_levels``: the neck's 1x1
    projections (its extra stride-2 levels follow them in ``input_proj``)."""
    out: dict[str, Tensor] = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked") or key.startswith("backbone.fc."):
            continue
        if key.startswith("backbone."):
            out["model.backbone.model." + key[len("backbone."):]] = v
        elif key.startswith("neck.convs.") or key.startswith("neck.extra_convs."):
            kind, idx, rest = key[len("neck."):].split(".", 2)
            i = int(idx) + (num_backbone_levels if kind == "extra_convs" else 0)
            out[f"model.input_proj.{i}.{rest}"] = v
        elif key.startswith("head.transformer.encoder.layers."):
            idx, rest = key[len("head.transformer.encoder.layers."):].split(".", 1)
            out[f"model.encoder.layers.{idx}.{_rename(rest, _ENC, key[:-len(rest)])}"] = v
        elif key.startswith("head.transformer.decoder.layers."):
            idx, rest = key[len("head.transformer.decoder.layers."):].split(".", 1)
            pre = f"model.decoder.layers.{idx}.self_attn."
            if rest in ("self_attn.in_proj_weight", "self_attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{pre}{name}.{kind}"] = part
            else:
                out[f"model.decoder.layers.{idx}.{_rename(rest, _DEC, key[:-len(rest)])}"] = v
        elif key.startswith("head.transformer.") and key[len("head.transformer."):].startswith(_TRANSFORMER_TOP):
            out["model." + key[len("head.transformer."):]] = v
        elif key.startswith(("head.class_embed.", "head.bbox_embed.")):
            out[key[len("head."):]] = v
            out["model.decoder." + key[len("head."):]] = v
        elif key == "head.query_embed.weight":
            out["model.query_position_embeddings.weight"] = v
        else:
            raise KeyError(f"to_hf_state_dict: no transformers name for {key}")
    return out


def hf_config_kwargs(model: nn.Module) -> dict[str, Any]:
    """``DeformableDetrConfig`` arguments for a built detres ``DeformableDETR`` (ResNet + ChannelMapper
    on res3..res5 + extra levels); raises ValueError naming what transformers cannot mirror."""
    head, backbone, neck = model.head, model.backbone, model.neck
    tr = head.transformer
    if type(backbone).__name__ != "ResNet" or getattr(backbone, "variant", "b") != "b":
        raise ValueError("--compare transformers needs model.backbone ResNet (variant b): transformers builds timm's resnetNN")
    if type(neck).__name__ != "ChannelMapper" or neck.in_features != ["res3", "res4", "res5"]:
        raise ValueError("--compare transformers needs model.neck ChannelMapper with in_features [res3, res4, res5] "
                         "(transformers reads those three timm stages)")
    enc, dec = tr.encoder.layers[0], tr.decoder.layers[0]
    acts = {F.relu: "relu", F.gelu: "gelu"}
    return dict(
        num_labels=head.num_classes, num_queries=head.num_queries, two_stage_num_proposals=head.num_queries,
        two_stage=head.two_stage, with_box_refine=head.with_box_refine, d_model=tr.d_model,
        encoder_layers=len(tr.encoder.layers), decoder_layers=len(tr.decoder.layers),
        encoder_ffn_dim=enc.linear1.out_features, decoder_ffn_dim=dec.linear1.out_features,
        encoder_attention_heads=tr.nhead, decoder_attention_heads=tr.nhead,
        num_feature_levels=tr.num_feature_levels, encoder_n_points=enc.self_attn.n_points,
        decoder_n_points=dec.cross_attn.n_points, activation_function=acts[enc.act], dropout=0.0,
        auxiliary_loss=head.aux_loss, use_timm_backbone=True, backbone=f"resnet{backbone.depth}",
        use_pretrained_backbone=False, disable_custom_kernels=True,
    )


def build_hf_deformable(model: nn.Module) -> nn.Module:
    """``DeformableDetrForObjectDetection`` with ``model``'s architecture and weights, eval mode;
    the load is strict (every HF tensor comes from ``model``)."""
    transformers = import_extra("transformers", "--compare transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.DeformableDetrConfig(**hf_config_kwargs(model))
    hf = transformers.DeformableDetrForObjectDetection(config).eval()
    sd = to_hf_state_dict(model.state_dict(), num_backbone_levels=len(model.neck.in_features))
    return load_converted(hf, sd, "Deformable DETR")


def load_converted(hf: nn.Module, sd: dict[str, Tensor], name: str, own_buffers: tuple[str, ...] = ()) -> nn.Module:
    """Load the renamed detres weights ``sd`` into the transformers model ``hf``, strictly: every HF
    tensor must come from ``sd`` but ``num_batches_tracked`` and keys ending in ``own_buffers``
    (HF's constant buffers); raises naming the first keys that do not fit."""
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if own_buffers:
        missing = [k for k in missing if not k.endswith(("num_batches_tracked", *own_buffers))]
    if missing or unexpected:
        raise ValueError(f"detres -> transformers {name} weights do not fit: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return hf


def build_hf_processor(input_cfg: Any) -> Any:
    """``DeformableDetrImageProcessor`` with the detres ``input`` block's test resize and mean / std."""
    transformers = import_extra("transformers", "--compare transformers")
    mean = [float(m) / 255.0 for m in input_cfg.pixel_mean]
    std = [float(s) / 255.0 for s in input_cfg.pixel_std]
    if not int(input_cfg.min_size_test):  # detres feeds images at their own size
        return transformers.DeformableDetrImageProcessor(do_resize=False, image_mean=mean, image_std=std)
    size = {"shortest_edge": int(input_cfg.min_size_test), "longest_edge": int(input_cfg.max_size_test)}
    return transformers.DeformableDetrImageProcessor(size=size, image_mean=mean, image_std=std)


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int) -> int:
    """Seeded random weights where a fresh Deformable DETR is degenerate, so that a comparison checks
    something: norm statistics and affine (a fresh ResNet has identity norms), the sampling-offset and
    attention-weight matrices (zero at init: every query samples the same ring, uniformly), the box
    heads' last layers (zero at init: boxes = proposals) and the class heads. Returns the tensors set."""
    g = torch.Generator().manual_seed(seed)
    n = 0

    def put(t: Tensor, scale: float, shift: float = 0.0, uniform: bool = False) -> None:
        nonlocal n
        r = torch.rand(t.shape, generator=g) if uniform else torch.randn(t.shape, generator=g)
        t.copy_(r * scale + shift)
        n += 1

    for name, m in model.named_modules():
        if all(hasattr(m, a) for a in ("weight", "bias", "running_mean", "running_var")) and m.running_mean is not None:
            put(m.weight, 0.5, 0.5, uniform=True)
            put(m.bias, 0.1)
            put(m.running_mean, 0.1)
            put(m.running_var, 1.0, 0.5, uniform=True)
        elif name.endswith(("sampling_offsets", "attention_weights")) and isinstance(m, nn.Linear):
            put(m.weight, 0.01)
        elif ".bbox_embed." in f".{name}" and isinstance(m, nn.Linear) and name.endswith("layers.2"):
            put(m.weight, 0.01)
        elif ".class_embed." in f".{name}" and isinstance(m, nn.Linear):
            put(m.weight, 0.3)
    return n


def hf_raw_outputs(hf: nn.Module, batch: ImageBatch) -> Any:
    """The HF model on a detres ``ImageBatch`` (pixel mask = not padding)."""
    with torch.inference_mode():
        return hf(pixel_values=batch.tensor, pixel_mask=(~batch.pad_mask).long())


def compare_raw(model: nn.Module, hf: nn.Module, batch: ImageBatch) -> dict[str, Any]:
    """Max |diff| of ``pred_logits`` / ``pred_boxes`` between detres ``forward_raw`` and the HF model on
    the same batch. Two-stage adds ``same_proposals_*``: detres fed HF's top-k encoder tokens
    (``select_indices``), which rules out reorderings of near-tied proposal scores; and
    ``proposals_equal``: whether both picked the same tokens."""
    out = hf_raw_outputs(hf, batch)
    with torch.inference_mode():
        ours = model.forward_raw(batch)
    res: dict[str, Any] = {"logits_max_diff": float((ours["pred_logits"] - out.logits).abs().max()),
                           "boxes_max_diff": float((ours["pred_boxes"] - out.pred_boxes).abs().max())}
    if getattr(out, "enc_outputs_class", None) is not None:
        topk = torch.topk(out.enc_outputs_class[..., 0], ours["pred_logits"].shape[1], dim=1)[1]
        with torch.inference_mode():
            same = model.forward_raw(batch, select_indices=topk)
            ours_topk = torch.topk(ours["enc_outputs"]["pred_logits"][..., 0], topk.shape[1], dim=1)[1]
        res["proposals_equal"] = bool(torch.equal(ours_topk.sort(1)[0], topk.sort(1)[0]))
        res["same_proposals_logits_max_diff"] = float((same["pred_logits"] - out.logits).abs().max())
        res["same_proposals_boxes_max_diff"] = float((same["pred_boxes"] - out.pred_boxes).abs().max())
        res["enc_logits_max_diff"] = float((ours["enc_outputs"]["pred_logits"] - out.enc_outputs_class).abs().max())
    return res


class HFDeformablePipeline(nn.Module):
    """What a transformers user runs per call: image processor (resize, normalize, pad + mask), the
    model, ``post_process_object_detection`` (top-``top_k`` sigmoid scores over queries x classes, no
    threshold); returns detres' per-image ``{"boxes" xyxy, "scores", "labels"}`` (labels 0..K-1)."""

    def __init__(self, hf: nn.Module, processor: Any, top_k: int = 100) -> None:
        super().__init__()
        self.hf, self.processor, self.top_k = hf, processor, top_k

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        inputs = self.processor(images=images, return_tensors="pt")
        out = self.hf(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        sizes = [tuple(im.shape[-2:]) for im in images]
        res = self.processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes, top_k=self.top_k)
        return [{"boxes": r["boxes"], "scores": r["scores"], "labels": r["labels"]} for r in res]
