"""Data: training-pipeline images/s (decode + resize + flip + batch) vs a torchvision reference-scripts pipeline.

detres: OpenCV decode + ``ResizeShortestEdge`` + ``RandomFlip`` through ``build_train_loader``.
reference: PIL decode + ``torchvision.transforms.v2`` (RandomShortestSize, RandomHorizontalFlip,
PILToTensor) on ``tv_tensors.BoundingBoxes``, as torchvision's detection reference scripts. Same
images, same sizes, same batch size and worker count.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

SHORT = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``tools/benchmark.py data``."""
    parser.add_argument("--bccd", default=None, help="BCCD root (holding BCCD/); e.g. ../shared/data/bccd")
    parser.add_argument("--shapes", default=None, help="shapes dataset dir (default: generate 200 images in a temp dir)")
    parser.add_argument("--num-images", type=int, default=120, help="images timed per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-size", type=int, default=1333)


class _TorchvisionStyle(Dataset):
    """PIL decode + transforms.v2 on tv_tensors boxes (torchvision references/detection style)."""

    def __init__(self, records: list[dict[str, Any]], max_size: int) -> None:
        from torchvision.transforms import v2

        self.records = records
        self.t = v2.Compose([v2.RandomShortestSize(min_size=SHORT, max_size=max_size), v2.RandomHorizontalFlip(0.5),
                             v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image
        from torchvision import tv_tensors

        r = self.records[i]
        img = Image.open(r["file_name"]).convert("RGB")
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(r["boxes"]), format="XYXY", canvas_size=(img.height, img.width))
        img, target = self.t(img, {"boxes": boxes, "labels": torch.from_numpy(r["labels"])})
        return img, target


def _as_list(batch: list) -> list:
    return batch


def _time(it: Any, n_batches: int) -> float:
    next(it)  # warm-up (worker start-up excluded)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return time.perf_counter() - t0


def _bench(node: dict[str, Any], args: argparse.Namespace, workers: int) -> dict[str, float]:
    from detres.data import build_dataset, build_train_loader

    tnodes = [{"_target_": "ResizeShortestEdge", "short_edge": SHORT, "max_size": args.max_size},
              {"_target_": "RandomFlip"}]
    ds = build_dataset(node, tnodes, True)
    cfg = OmegaConf.create({"train": {"batch_size": args.batch_size, "seed": 0},
                            "data": {"num_workers": workers, "aspect_ratio_grouping": False, "pin_memory": False}})
    n_batches = max(1, args.num_images // args.batch_size)
    ours = _time(build_train_loader(cfg, dataset=ds), n_batches)
    ref_ds = _TorchvisionStyle(ds.records, args.max_size)
    sampler = torch.utils.data.RandomSampler(ref_ds, replacement=True, num_samples=10 ** 8,
                                             generator=torch.Generator().manual_seed(0))
    ref = DataLoader(ref_ds, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                     collate_fn=_as_list, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    theirs = _time(iter(ref), n_batches)
    n = n_batches * args.batch_size
    return {"detres_img_s": n / ours, "torchvision_img_s": n / theirs, "speedup": theirs / ours}


def run(args: argparse.Namespace) -> dict:
    """Measure every (dataset, workers) pair and print a table; returns the figures."""
    torch.set_num_threads(1)
    nodes: dict[str, dict[str, Any]] = {}
    if args.bccd:
        nodes["bccd"] = {"_target_": "VocDetection", "root": str(Path(args.bccd) / "BCCD"), "split": "trainval",
                         "class_names": ["RBC", "WBC", "Platelets"]}
    shapes = args.shapes
    if shapes is None:
        from detres.data.shapes import make_shapes

        shapes = tempfile.mkdtemp(prefix="detres_shapes_")
        make_shapes(shapes, 200, 0, seed=0)
    nodes["shapes"] = {"_target_": "CocoDetection", "ann_file": str(Path(shapes) / "annotations/instances_train.json"),
                       "image_root": str(Path(shapes) / "train")}
    results: dict[str, Any] = {"batch_size": args.batch_size, "num_images": args.num_images, "runs": []}
    print(f"{'dataset':<8} {'workers':>7} {'detres img/s':>13} {'torchvision img/s':>18} {'speedup':>8}")
    for name, node in nodes.items():
        for w in args.workers:
            r = {"dataset": name, "workers": w, **_bench(node, args, w)}
            results["runs"].append(r)
            print(f"{name:<8} {w:>7} {r['detres_img_s']:>13.1f} {r['torchvision_img_s']:>18.1f} {r['speedup']:>7.2f}x")
    return results
