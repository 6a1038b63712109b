#!/usr/bin/env python
"""The README's main job: make the synthetic shapes dataset, train, evaluate, plot, draw detections.

    python tools/main_job.py --config configs/examples/shapes_faster_rcnn.yaml --out output [key=value ...]

Each step is one of detres' public command-line tools, run as its own process, so this script shows
exactly what a user would type. Everything lands in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


#: Exit code of a tool whose optional extra (matplotlib, ...) is missing: detres.utils.extras.EXIT_MISSING_EXTRA.
EXIT_MISSING_EXTRA = 4
SKIPPED: list[str] = []


def step(title: str, cmd: list[str], optional: bool = False) -> float:
    """Run one tool, streaming its output; stop the job with its exit code when it fails, except when
    an ``optional`` step lacks its extra (the tool printed the pip line): then note it and go on."""
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == EXIT_MISSING_EXTRA and optional:
        print(f"main job: step '{title}' skipped (an optional extra is missing); the other steps go on",
              file=sys.stderr)
        SKIPPED.append(title)
    elif rc != 0:
        print(f"main job: step '{title}' failed with exit code {rc}", file=sys.stderr)
        sys.exit(rc)
    return time.time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/examples/shapes_faster_rcnn.yaml")
    parser.add_argument("--out", default="output")
    parser.add_argument("--shapes-dir", default=os.path.join(os.environ.get("DETRES_DATASETS", "datasets"), "shapes"))
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-images", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="config overrides for training, key=value")
    args = parser.parse_args()
    py, out, shapes = sys.executable, Path(args.out), Path(args.shapes_dir)
    times: dict[str, float] = {}
    t_start = time.time()

    ann = shapes / "annotations" / "instances_val.json"
    if not ann.is_file():
        times["dataset"] = step("1/5 synthetic shapes dataset", [
            py, "datasets/make_shapes.py", "--out", str(shapes), "--num-train", str(args.num_train),
            "--num-val", str(args.num_val), "--seed", str(args.seed)])
    else:
        print(f"\n=== 1/5 synthetic shapes dataset: using {shapes}")
    times["train"] = step("2/5 train", [py, "tools/train.py", "--config", args.config, f"train.output_dir={out}", *args.overrides])
    cfg, weights = out / "config.yaml", out / "model_final.pth"
    times["eval"] = step("3/5 evaluate", [py, "tools/eval.py", "--config", str(cfg), "--weights", str(weights),
                                          "--output", str(out / "metrics.json")])
    times["plot"] = step("4/5 loss curve", [py, "tools/plot_logs.py", "--logs", str(out / "metrics.jsonl"),
                                            "--out", str(out / "loss_curve.png")], optional=True)
    times["demo"] = step("5/5 draw detections", [py, "tools/demo.py", "--config", str(cfg), "--weights", str(weights),
                                                 "--input", str(shapes / "val"), "--limit", str(args.demo_images),
                                                 "--out", str(out / "demo"), "--score-thresh", "0.5"])
    stats = json.loads((out / "metrics.json").read_text())
    print("\n=== main job done in %.1f min (%s)" % ((time.time() - t_start) / 60,
          ", ".join(f"{k} {v:.0f}s" for k, v in times.items())))
    print("| " + " | ".join(STAT_KEYS) + " |\n|" + "---|" * len(STAT_KEYS))
    print("| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_KEYS) + " |")
    made = ["config.yaml", "model_final.pth", "metrics.jsonl", "metrics.json", "loss_curve.png", "demo/*.png"]
    made = [m for m in made if m == "demo/*.png" or (out / m).is_file()]
    print(f"outputs in {out}/: {', '.join(made)}" + (f" (skipped: {', '.join(SKIPPED)})" if SKIPPED else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
