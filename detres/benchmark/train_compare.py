"""``tools/benchmark.py train --compare torchvision``: seconds per training iteration (forward,
backward, SGD step) of a config's model beside torchvision's Faster R-CNN training step on the same
converted weights and the same batch, alternating in one process, and the ratio detres / torchvision.

The batch is synthetic and in memory (data time is ~0 and not part of the figure); images are given
at their training size (torchvision's in-model resize is then a no-op scale of 1). The two models
sample anchors and proposals with their own random streams, so their losses differ; the work per
step is the same recipe (256 anchors, 512 proposals per image, frozen stem and res2).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from detres.benchmark.reference import build_torchvision_frcnn, load_reference_weights, summarize, time_alternating


def _batch(n: int, h: int, w: int, boxes: int, seed: int, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device))
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, 90, (boxes,), generator=g).to(device)})
    return images, targets


def _step_fn(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> Callable[[], Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step() -> Tensor:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time training steps (and the reference's); return medians, IQRs and the ratio."""
    from detres.config.args import load_config_from_args
    from detres.modeling.build import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = list(args.overrides) + (["num_classes=90"] if args.compare else [])
    cfg = load_config_from_args(argparse.Namespace(imports=args.imports, config=args.config, overrides=overrides))
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    h, w = args.image_size
    images, targets = _batch(args.batch, h, w, args.boxes, args.seed, device)
    fns = {}
    result: dict[str, Any] = {"config": args.config, "device": str(device), "threads": torch.get_num_threads(),
                              "image_size": [h, w], "batch": args.batch, "iters": args.iters}
    if args.compare:
        ref = build_torchvision_frcnn("v2" if "v2" in str(args.config) else "v1", args.seed)
        load_reference_weights(model, ref)
        ref.transform.min_size, ref.transform.max_size = (min(h, w),), max(h, w)
        ref.to(device).train()
        ref_images = [im.float() / 255.0 for im in images]
        ref_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        fns["reference"] = _step_fn(ref, ref_images, ref_targets)
        result["reference"] = "torchvision fasterrcnn_resnet50_fpn"
    model.to(device).train()
    if cfg.train.get("channels_last", True):  # as the Trainer does
        model.to(memory_format=torch.channels_last)
    fns["detres"] = _step_fn(model, images, targets)
    result["params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = time_alternating(dict(sorted(fns.items())), args.iters, args.warmup, sync)
    for who, key in (("detres", ""), ("reference", "reference_")):
        if who in times:
            wl, c = summarize(times[who]["wall"]), summarize(times[who]["cpu"])
            result.update({f"{key}iter_s": wl["median"], f"{key}iter_iqr_s": wl["iqr"], f"{key}cpu_s": c["median"]})
    if "reference" in times:
        result["ratio"] = result["iter_s"] / result["reference_iter_s"]
        result["cpu_ratio"] = result["cpu_s"] / result["reference_cpu_s"]
    if not args.json:
        line = f"train step, batch {args.batch} of {h}x{w}: detres {result['iter_s']:.3f} s/iter (IQR {result['iter_iqr_s']:.3f}, cpu {result['cpu_s']:.3f})"
        if "ratio" in result:
            line += (f" | torchvision {result['reference_iter_s']:.3f} s/iter (IQR {result['reference_iter_iqr_s']:.3f}, "
                     f"cpu {result['reference_cpu_s']:.3f}) | ratio wall {result['ratio']:.3f}, cpu {result['cpu_ratio']:.3f}")
        print(line)
    return result
