"""eval: time detres' COCO evaluator against pycocotools and faster-coco-eval on a synthetic COCO-val-sized case."""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from typing import Any

import numpy as np

def make_case(num_images: int = 5000, dets_per_image: int = 100, num_classes: int = 80,
              seed: int = 0) -> tuple[dict, list[dict]]:
    """A seeded COCO GT (~7.4 boxes per image, 1% crowd, 80 classes) and results (dets_per_image each)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    aid = 1
    for i in range(1, num_images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i:012d}.jpg"})
        n = int(rng.poisson(7.4))
        bw = rng.uniform(4, w * 0.6, n); bh = rng.uniform(4, h * 0.6, n)
        x = rng.uniform(0, w - bw); y = rng.uniform(0, h - bh)
        cats = rng.integers(1, num_classes + 1, n)
        crowd = rng.random(n) < 0.01
        gtb = np.stack([x, y, bw, bh], 1).round(2)
        for j in range(n):
            b = gtb[j].tolist()
            anns.append({"id": aid, "image_id": i, "category_id": int(cats[j]), "bbox": b,
                         "area": float(b[2] * b[3] * rng.uniform(0.6, 1.0)), "iscrowd": int(crowd[j])})
            aid += 1
        k = min(n * 3, dets_per_image // 2)
        src = rng.integers(0, max(n, 1), k)
        db = []; dc = []
        if n:
            jit = gtb[src] + rng.normal(0, 1, (k, 4)) * np.concatenate([gtb[src, 2:], gtb[src, 2:]], 1) * 0.08
            db.append(jit); dc.append(np.where(rng.random(k) < 0.9, cats[src], rng.integers(1, num_classes + 1, k)))
        r = dets_per_image - (k if n else 0)
        rw = rng.uniform(4, w * 0.5, r); rh = rng.uniform(4, h * 0.5, r)
        db.append(np.stack([rng.uniform(0, w - rw), rng.uniform(0, h - rh), rw, rh], 1))
        dc.append(rng.integers(1, num_classes + 1, r))
        db = np.concatenate(db).round(2); dc = np.concatenate(dc)
        db[:, 2:] = np.maximum(db[:, 2:], 1.0)
        sc = rng.random(len(db)).round(4)
        for b, c, s in zip(db.tolist(), dc.tolist(), sc.tolist()):
            dets.append({"image_id": i, "category_id": int(c), "bbox": b, "score": s})
    cats = [{"id": c, "name": f"class_{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--images N --dets-per-image D --seed S --skip-pycocotools``."""
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pycocotools", action="store_true", help="pycocotools takes ~1.5 min at 5000 images")


def _reference(gt: dict, dets: list[dict], fast: bool) -> tuple[list[float], float]:
    if fast:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    gt, dets = copy.deepcopy(gt), copy.deepcopy(dets)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = gt
        g.createIndex()
        ev = COCOeval(g, g.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return [float(x) for x in ev.stats[:12]], time.perf_counter() - t


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the three evaluators from the same in-memory GT dict and results list; compare stats."""
    from detres.evaluation import STAT_NAMES, evaluate_results

    gt, dets = make_case(args.images, args.dets_per_image, seed=args.seed)
    t = time.perf_counter()
    m = evaluate_results(gt, dets, backend="detres")
    times = {"detres": time.perf_counter() - t}
    stats = {"detres": [m[k] for k in STAT_NAMES]}
    stats["faster_coco_eval"], times["faster_coco_eval"] = _reference(gt, dets, True)
    if not args.skip_pycocotools:
        stats["pycocotools"], times["pycocotools"] = _reference(gt, dets, False)
    diff = {k: float(np.max(np.abs(np.subtract(v, stats["detres"])))) for k, v in stats.items() if k != "detres"}
    out = {"images": args.images, "gt_boxes": len(gt["annotations"]), "detections": len(dets),
           "seconds": times, "max_abs_stat_diff": diff, "stats": dict(zip(STAT_NAMES, stats["detres"])),
           "speedup_vs": {k: times[k] / times["detres"] for k in times if k != "detres"}}
    if not args.json:
        print(f"{args.images} images, {out['gt_boxes']} GT, {len(dets)} detections")
        for k, v in times.items():
            print(f"  {k:<17s} {v:8.2f} s" + (f"   detres is {times[k] / times['detres']:.1f}x faster, "
                                            f"max |stat diff| {diff[k]:.1e}" if k != "detres" else ""))
    return out
