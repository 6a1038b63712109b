"""model: inference latency (batch 1), throughput (batch N), peak memory, params and FLOPs of a config's
model; ``--compare torchvision`` times torchvision's Faster R-CNN on the same weights, alternating;
``--compare transformers`` times Hugging Face's ``DeformableDetrForObjectDetection`` (Deformable DETR
configs) or ``RTDetrV2ForObjectDetection`` (RT-DETR configs): image processor + model +
post_process_object_detection, on the same (seeded random) weights.
``--compare-config OTHER`` times another config's model (built with the same seed, overrides and
runtime passes) side by side, e.g. DINO against Deformable DETR.

What is measured:
- latency_s: median seconds of one ``model([image])`` call (preprocess + network + postprocess) over
  ``--iters`` runs after ``--warmup``; ``latency_iqr_s`` is its inter-quartile range.
- cpu_s: median CPU seconds of this process per call (``time.process_time``, all threads); on a
  shared machine it is far less disturbed by other processes than wall time.
- ratio / cpu_ratio: detres (``--config``) / reference (``--compare`` or ``--compare-config``) medians of wall / CPU seconds, same inputs, alternating runs.
- throughput_img_s: images / median seconds of one ``model([image] * batch)`` call.
- peak_mem_mb: CUDA: ``torch.cuda.max_memory_allocated`` during one batch-1 call. CPU: the growth of
  the process' max resident set size (``resource.getrusage``) over the first batch-1 call, which runs
  before anything else; it is a high-water mark, so later (smaller) calls do not show. With
  ``--compare transformers`` or ``--compare-config`` both models' first calls are measured alone: Linux's peak RSS is reset
  (``/proc/self/clear_refs``) before each, and ``reference_peak_mem_mb`` is the reference's growth.
- raw (``--compare transformers``): max |diff| of ``pred_logits`` / ``pred_boxes`` between detres'
  ``forward_raw`` and the HF model on the same preprocessed batch (two-stage: also with HF's proposals).
- gflops: ``torch.utils.flop_counter.FlopCounterMode`` over one batch-1 call (convolutions and
  matmuls; RoIAlign and NMS are not counted).
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
from typing import Any

import torch
from torch import Tensor, nn

from detres.benchmark.reference import (
    build_torchvision_frcnn,
    compare_detections,
    load_reference_weights,
    summarize,
    time_alternating,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--config C [k=v ...] --image-size H W --batch N --iters K --warmup W --compare torchvision``."""
    from detres.config.args import add_config_args

    add_config_args(parser)
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                        help="input image size before the model's own test resize (default 480 640)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the throughput run (1 = skip it)")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per model and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    parser.add_argument("--compare", choices=["torchvision", "transformers", "unoptimized"], default=None,
                        help="also time torchvision's Faster R-CNN on the same converted weights, transformers' "
                             "DeformableDetrForObjectDetection / RTDetrV2ForObjectDetection on a Deformable DETR's / "
                             "RT-DETR's weights (pip install "
                             "'detres[benchmark]'), or the same detres model without detres.runtime.optimize")
    parser.add_argument("--compare-config", default=None, metavar="OTHER.yaml",
                        help="also time this config's model (same seed, the same overrides plus "
                             "--compare-overrides, the same runtime passes), alternating with --config's")
    parser.add_argument("--compare-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for --compare-config only (after the shared ones)")
    parser.add_argument("--torchvision-version", choices=["auto", "v1", "v2"], default="auto",
                        help="fasterrcnn_resnet50_fpn (v1) or _v2; auto: v2 when the config name says so")
    parser.add_argument("--no-optimize", action="store_true",
                        help="time the reference model: no detres.runtime passes at all")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="the channels_last, pointwise and onednn_linear passes (default on; NHWC weights "
                             "with oneDNN kernels on CPU)")
    parser.add_argument("--winograd", action=argparse.BooleanOptionalAction, default=True,
                        help="the winograd pass: 3x3 stride-1 convs by Winograd on CPU (F(4x4,3x3) GEMMs, NNPACK on "
                             "large maps) "
                             "(default on; about 1e-5 relative error per conv instead of 1e-6)")
    parser.add_argument("--jit-freeze", action="store_true",
                        help="the jit_freeze pass: trace+freeze backbone and neck per input shape (oneDNN "
                             "prepacked, CPU); turns the channels-last passes off")
    parser.add_argument("--compile", action="store_true", help="the compile pass: torch.compile the backbone and neck")
    parser.add_argument("--amp", action="store_true", help="CUDA: autocast to float16")
    parser.add_argument("--seed", type=int, default=0)


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def _release_freed_memory() -> None:
    """glibc: hand freed heap pages back to the OS (``malloc_trim``), so that a second model's first
    call grows the resident set as the first model's did instead of reusing what that one freed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_growth_mb(fn: Any) -> tuple[Any, float]:
    """(fn(), growth of the peak resident set over the call in MB). Linux: the peak is reset first
    (``/proc/self/clear_refs``), so earlier calls do not hide it; elsewhere the ``ru_maxrss`` growth."""
    try:
        _release_freed_memory()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        base = int(status["VmRSS"].split()[0]) / 1024.0
        out = fn()
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return out, int(status["VmHWM"].split()[0]) / 1024.0 - base
    except (OSError, KeyError, ValueError):
        before = _maxrss_mb()
        out = fn()
        return out, _maxrss_mb() - before


def count_flops(model: nn.Module, images: list[Tensor]) -> float:
    """GFLOPs of one ``model(images)`` call counted by FlopCounterMode (conv, matmul, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(images)
    return counter.get_total_flops() / 1e9


def runtime_passes(args: argparse.Namespace) -> list[str]:
    """The ``detres.runtime`` passes the flags select: ``BACKENDS["cpu"]`` less the channels-last trio
    (``--no-channels-last`` or ``--jit-freeze``) or ``winograd`` (``--no-winograd``), plus
    ``jit_freeze`` / ``compile`` when asked; none with ``--no-optimize``."""
    from detres.runtime import BACKENDS

    if args.no_optimize:
        return []
    drop = set()
    if not args.channels_last or args.jit_freeze:
        drop |= {"channels_last", "pointwise", "onednn_linear"}
    if not args.winograd:
        drop.add("winograd")
    extra = [n for n, on in (("jit_freeze", args.jit_freeze), ("compile", args.compile)) if on]
    return [n for n in BACKENDS["cpu"] if n not in drop] + extra


def _build(args: argparse.Namespace) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    from detres.config.args import load_config_from_args
    from detres.modeling.build import build_model

    overrides = list(args.overrides)
    if args.compare == "torchvision":
        # 90 classes keep torchvision's 91 slots one to one, so the softmax (and the detections) match.
        overrides = [o for o in overrides if not o.startswith("num_classes=")] + ["num_classes=90"]
    cfg = load_config_from_args(argparse.Namespace(imports=args.imports, config=args.config, overrides=overrides))
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    info: dict[str, Any] = {"config": args.config, "overrides": overrides}
    ref = None
    if args.compare_config:
        if args.compare is not None:
            raise ValueError(f"--compare-config {args.compare_config}: pass either it or --compare {args.compare}, not both")
        other = [*overrides, *args.compare_overrides]
        ref_cfg = load_config_from_args(argparse.Namespace(imports=args.imports, config=args.compare_config,
                                                           overrides=other))
        torch.manual_seed(args.seed)
        ref = build_model(ref_cfg).eval()
        info.update(reference=str(args.compare_config), reference_overrides=other,
                    reference_params=sum(p.numel() for p in ref.parameters()))
    elif args.compare == "torchvision":
        version = args.torchvision_version
        if version == "auto":
            version = "v2" if "v2" in str(args.config) else "v1"
        inp = cfg.model.input
        if inp.format != "RGB":
            raise ValueError(f"{args.config}: --compare torchvision needs model.input.format RGB (torchvision's "
                             f"normalization), got {inp.format}; use a *_torchvision_* config")
        ref = build_torchvision_frcnn(version, args.seed)
        # The same test-time resize as the detres config (torchvision's defaults are 800 / 1333).
        ref.transform.min_size, ref.transform.max_size = (int(inp.min_size_test),), int(inp.max_size_test)
        load_reference_weights(model, ref)
        info["reference"] = f"torchvision fasterrcnn_resnet50_fpn{'_v2' if version == 'v2' else ''}"
    elif args.compare == "transformers":
        ref, info["reference"] = _build_hf(model, cfg, args.seed)
    return model, ref, info


def _build_hf(model: nn.Module, cfg: Any, seed: int) -> tuple[nn.Module, str]:
    """The transformers pipeline on ``model``'s weights (both first get seeded random weights where a
    fresh model is degenerate): ``RTDetrV2ForObjectDetection`` for an RT-DETR, else
    ``DeformableDetrForObjectDetection``. Returns (pipeline, its name)."""
    from detres.utils.extras import import_extra

    transformers = import_extra("transformers", "--compare transformers")

    if type(model).__name__ == "RTDETR":
        from detres.benchmark.hf_rtdetr import (
            HFRTDetrPipeline,
            build_hf_rtdetr,
            build_hf_rtdetr_processor,
            randomize_rtdetr_weights,
        )

        randomize_rtdetr_weights(model, seed)
        pipe = HFRTDetrPipeline(build_hf_rtdetr(model), build_hf_rtdetr_processor(cfg.model.input))
        return pipe, f"transformers {transformers.__version__} RTDetrV2ForObjectDetection"
    from detres.benchmark.hf_deformable import (
        HFDeformablePipeline,
        build_hf_deformable,
        build_hf_processor,
        randomize_weights,
    )

    randomize_weights(model, seed)
    pipe = HFDeformablePipeline(build_hf_deformable(model), build_hf_processor(cfg.model.input),
                                top_k=int(model.head.test_topk))
    return pipe, f"transformers {transformers.__version__} DeformableDetrForObjectDetection"


def _compare_hf_raw(model: nn.Module, hf: nn.Module, batch: Any) -> dict[str, Any]:
    """Raw-output diffs against the HF model (see ``hf_rtdetr.compare_rtdetr_raw`` / ``hf_deformable.compare_raw``)."""
    if type(model).__name__ == "RTDETR":
        from detres.benchmark.hf_rtdetr import compare_rtdetr_raw

        return compare_rtdetr_raw(model, hf, batch)
    from detres.benchmark.hf_deformable import compare_raw

    return compare_raw(model, hf, batch)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the model (and the reference), check detections agree, print a table; return the figures."""
    from detres.runtime import optimize

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, ref, info = _build(args)
    params = sum(p.numel() for p in model.parameters())
    if args.compare == "unoptimized":
        ref = copy.deepcopy(model).eval()
        info["reference"] = "detres unoptimized"
    # FlopCounterMode sees neither TorchScript graphs nor the oneDNN ops the optimized model calls
    # directly: count on the reference model before optimization.
    passes = runtime_passes(args)
    flops_model = copy.deepcopy(model) if passes else model
    flops_model.requires_grad_(False)
    model.to(device)  # before the passes, so that CPU-only kernels are skipped on a GPU
    optimize(model, passes=passes)
    info["passes"] = dict(model.runtime_passes)
    ref_flops_model = None
    if ref is not None:
        ref.to(device)
        if args.compare_config:
            ref_flops_model = copy.deepcopy(ref).requires_grad_(False) if passes else ref
            optimize(ref, passes=passes)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    g = torch.Generator().manual_seed(args.seed)
    h, w = args.image_size
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device) for _ in range(max(args.batch, 1))]
    one = images[:1]
    # torchvision wants float 0..1; converted once here so its timing does not include it.
    ref_images = [im.float() / 255.0 for im in images] if args.compare == "torchvision" else images
    ref_one = ref_images[:1]

    def call(m: nn.Module, ims: list[Tensor]) -> Any:
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=args.amp and cuda):
            return m(ims)

    # Peak memory first, before anything else has raised the high-water mark.
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ours_out = call(model, one)
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif args.compare == "transformers" or args.compare_config:
        ours_out, peak_mb = _peak_growth_mb(lambda: call(model, one))
    else:
        before = _maxrss_mb()
        ours_out = call(model, one)
        peak_mb = _maxrss_mb() - before
    result: dict[str, Any] = {**info, "device": str(device), "threads": torch.get_num_threads(),
                              "image_size": [h, w], "batch": args.batch, "iters": args.iters,
                              "params": params, "peak_mem_mb": round(peak_mb, 1),
                              "optimized": not args.no_optimize, "channels_last": args.channels_last,
                              "compile": args.compile, "jit_freeze": args.jit_freeze, "amp": bool(args.amp and cuda)}
    result["gflops"] = round(count_flops(flops_model.to(device), one), 2)
    del flops_model
    if ref_flops_model is not None:
        result["reference_gflops"] = round(count_flops(ref_flops_model, ref_one), 2)
        del ref_flops_model

    fns = {"detres": lambda: call(model, one)}
    if ref is not None:
        if args.compare == "transformers" and not cuda:
            ref_out, ref_peak = _peak_growth_mb(lambda: call(ref, ref_one))
            result["reference_peak_mem_mb"] = round(ref_peak, 1)
            result["raw"] = _compare_hf_raw(model, ref.hf, model.preprocess(one))
        elif args.compare_config and not cuda:
            ref_out, ref_peak = _peak_growth_mb(lambda: call(ref, ref_one))
            result["reference_peak_mem_mb"] = round(ref_peak, 1)
        else:
            ref_out = call(ref, ref_one)
        if not args.compare_config:  # another model: its detections differ by design
            result["check"] = compare_detections(ours_out, ref_out, label_offset=int(args.compare == "torchvision"))
        fns["reference"] = lambda: call(ref, ref_one)
    times = time_alternating(fns, args.iters, args.warmup, sync)
    _add(result, "", times)
    if args.batch > 1:
        fns_b = {"detres": lambda: call(model, images)}
        if ref is not None:
            fns_b["reference"] = lambda: call(ref, ref_images)
        _add(result, "batch_", time_alternating(fns_b, args.iters, 0, sync))
        result["throughput_img_s"] = args.batch / result["batch_latency_s"]
        if ref is not None:
            result["reference_throughput_img_s"] = args.batch / result["reference_batch_latency_s"]
    if not args.json:
        _print_table(result)
    return result


def _add(result: dict[str, Any], prefix: str, times: dict[str, dict[str, list[float]]]) -> None:
    """Medians and IQRs of wall and CPU seconds; ratios detres / reference."""
    for who, key in (("detres", ""), ("reference", "reference_")):
        if who not in times:
            continue
        w, c = summarize(times[who]["wall"]), summarize(times[who]["cpu"])
        result.update({f"{key}{prefix}latency_s": w["median"], f"{key}{prefix}latency_iqr_s": w["iqr"],
                       f"{key}{prefix}cpu_s": c["median"], f"{key}{prefix}cpu_iqr_s": c["iqr"]})
    if "reference" in times:
        result[f"{prefix}ratio"] = result[f"{prefix}latency_s"] / result[f"reference_{prefix}latency_s"]
        result[f"{prefix}cpu_ratio"] = result[f"{prefix}cpu_s"] / result[f"reference_{prefix}cpu_s"]


def _print_table(r: dict[str, Any]) -> None:
    print(f"model {r['config']} on {r['device']} ({r['threads']} threads), input {r['image_size'][0]}x{r['image_size'][1]}")
    ref_mem = f" (reference +{r['reference_peak_mem_mb']:.0f} MB)" if "reference_peak_mem_mb" in r else ""
    print(f"  params {r['params'] / 1e6:.2f} M   GFLOPs {r['gflops']:.1f}   peak mem +{r['peak_mem_mb']:.0f} MB{ref_mem}")
    if "reference_gflops" in r:
        print(f"  {r['reference']}: params {r['reference_params'] / 1e6:.2f} M   GFLOPs {r['reference_gflops']:.1f}")
    for prefix, label in (("", "batch 1"), ("batch_", f"batch {r['batch']}")):
        if f"{prefix}latency_s" not in r:
            continue
        line = (f"  {label}: detres wall {r[f'{prefix}latency_s']:.3f} s (IQR {r[f'{prefix}latency_iqr_s']:.3f}), "
                f"cpu {r[f'{prefix}cpu_s']:.3f} s")
        if f"{prefix}ratio" in r:
            line += (f" | {r['reference']} wall {r[f'reference_{prefix}latency_s']:.3f} s "
                     f"(IQR {r[f'reference_{prefix}latency_iqr_s']:.3f}), cpu {r[f'reference_{prefix}cpu_s']:.3f} s"
                     f" | ratio wall {r[f'{prefix}ratio']:.3f}, cpu {r[f'{prefix}cpu_ratio']:.3f}")
        print(line)
    if "check" in r:
        c = r["check"]
        if "raw" in r:
            print("  raw outputs vs reference: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in r["raw"].items()))
        print(f"  detections identical: {c['identical']} (counts {c['detections']}, unmatched {c['unmatched']}, max box diff {c['max_box_diff']:.2e}, "
              f"max score diff {c['max_score_diff']:.2e})")
