"""eval: whole-process time of ``tools/eval.py --gt --results`` against faster-coco-eval's and pycocotools'
own COCOeval scripts on the same files (a synthetic COCO-val-sized case), with the stats compared.

Each tool runs as a fresh Python process that reads the two json files, scores them and prints the
stats, so import time (torch, if a tool imported it), json parsing and scoring all count. The tools
run interleaved ``--repeat`` times; the median is reported."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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
    """``--images N --dets-per-image D --seed S --repeat R --skip-pycocotools --workdir DIR``."""
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool (interleaved); the median is kept")
    parser.add_argument("--skip-pycocotools", action="store_true", help="pycocotools takes ~1.5 min at 5000 images")
    parser.add_argument("--workdir", default=None, help="write gt.json / dets.json here (default: a temp dir)")


#: The reference tools' own scripts: read the files, evaluate, print the 12 stats as json.
_REFERENCE = """
import contextlib, io, json, sys
if sys.argv[1] == "fast":
    from faster_coco_eval import COCO, COCOeval_faster as COCOeval
else:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    g = COCO(sys.argv[2])
    ev = COCOeval(g, g.loadRes(sys.argv[3]), "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(x) for x in ev.stats[:12]]))
"""


def _detres_command(gt: Path, dets: Path, out: Path) -> list[str]:
    tool = Path(__file__).resolve().parents[2] / "tools" / "eval.py"
    prefix = [sys.executable, str(tool)] if tool.is_file() else [
        sys.executable, "-c", "from detres.cli.common import run_main; from detres.cli.eval import main; run_main(main)"]
    return [*prefix, "--gt", str(gt), "--results", str(dets), "--output", str(out)]


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user+sys of the child, stdout) of one process."""
    import resource

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({run.returncode}): {run.stderr[-2000:]}")
    return dt, cpu, run.stdout


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the case to json files, time each tool's whole process on them, compare the stats."""
    from detres.evaluation import STAT_NAMES

    gt, dets = make_case(args.images, args.dets_per_image, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        gt_path, dt_path, out = work / "gt.json", work / "dets.json", work / "detres_metrics.json"
        gt_path.write_text(json.dumps(gt))
        dt_path.write_text(json.dumps(dets))
        cmds = {"detres": _detres_command(gt_path, dt_path, out),
                "faster_coco_eval": [sys.executable, "-c", _REFERENCE, "fast", str(gt_path), str(dt_path)]}
        if not args.skip_pycocotools:
            cmds["pycocotools"] = [sys.executable, "-c", _REFERENCE, "slow", str(gt_path), str(dt_path)]
        runs: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        stats: dict[str, list[float]] = {}
        for _ in range(max(1, args.repeat)):
            for name, cmd in cmds.items():
                if name == "pycocotools" and runs[name]:
                    continue  # once is enough for the slow reference
                dt, c, stdout = _timed(cmd)
                runs[name].append(dt)
                cpu[name].append(c)
                if name == "detres":
                    m = json.loads(out.read_text())
                    stats[name] = [m[k] for k in STAT_NAMES]
                else:
                    stats[name] = json.loads(stdout.strip().splitlines()[-1])
    times = {k: statistics.median(v) for k, v in runs.items()}
    cpu_s = {k: statistics.median(v) for k, v in cpu.items()}
    diff = {k: float(np.max(np.abs(np.subtract(v, stats["detres"])))) for k, v in stats.items() if k != "detres"}
    out_d = {"images": args.images, "gt_boxes": len(gt["annotations"]), "detections": len(dets),
             "seconds": times, "runs": runs, "cpu_seconds": cpu_s, "max_abs_stat_diff": diff, "stats": dict(zip(STAT_NAMES, stats["detres"])),
             "ratio_to": {k: times["detres"] / times[k] for k in times if k != "detres"}}
    if not args.json:
        print(f"{args.images} images, {out_d['gt_boxes']} GT, {len(dets)} detections; whole-process seconds, "
              f"median of {max(1, args.repeat)} interleaved runs")
        for k, v in times.items():
            print(f"  {k:<17s} {v:8.2f} s (CPU {cpu_s[k]:6.2f} s)  runs {[round(x, 2) for x in runs[k]]}" + (
                f"   detres / {k} = {times['detres'] / v:.2f}x, max |stat diff| {diff[k]:.1e}" if k != "detres" else ""))
    return out_d
