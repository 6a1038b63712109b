"""``detres demo --config C --weights W --input IMG|DIR|VIDEO --out DIR``: draw detections into PNGs
(or an annotated video) and write a JSON of the detections.

``--weights`` is required: an untrained model finds nothing. ``--random-weights`` runs the randomly
initialised model instead, for smoke tests of the pipeline."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2

from detres.cli.common import plain_text
from detres.config.args import add_config_args
from detres.predictor import Predictor, read_image_rgb
from detres.utils.visualize import draw_detections, save_rgb

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def _det_json(name: str, det: dict) -> dict:
    return {
        "file": name,
        "detections": [
            {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(lab), "class": c}
            for b, s, lab, c in zip(det["boxes"], det["scores"], det["labels"], det["class_names"])
        ],
    }


def _run_video(pred: Predictor, path: Path, out_dir: Path, thresh: float) -> list[dict]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"could not open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, records, idx = None, [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        det = pred(rgb)[0]
        drawn = draw_detections(rgb, det["boxes"], det["scores"], det["labels"], pred.class_names, thresh)
        if writer is None:
            h, w = rgb.shape[:2]
            writer = cv2.VideoWriter(str(out_dir / f"{path.stem}_det.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        records.append(_det_json(f"{path.name}#{idx}", det))
        idx += 1
    cap.release()
    if writer is not None:
        writer.release()
    return records


def main(argv: list[str] | None = None) -> int:
    """Detect on an image, a folder of images or a video; write drawn PNGs and detections.json."""
    parser = argparse.ArgumentParser(prog="detres demo", description=plain_text(__doc__))
    add_config_args(parser)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", default=None,
                         help="trained checkpoint (detres, torchvision, detectron2 or DETR layout); required")
    weights.add_argument("--random-weights", action="store_true",
                         help="no checkpoint: run the untrained model (smoke tests only; it detects nothing useful)")
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video file")
    parser.add_argument("--out", default="output/demo", help="output folder")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images from a folder (0 = all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-optimize", action="store_true",
                        help="run the reference model, without detres.runtime.optimize's inference passes")
    args = parser.parse_args(argv)

    from detres.registry import import_modules

    import_modules(args.imports)
    if args.random_weights:
        print("demo: --random-weights: the model is untrained, its detections mean nothing", file=sys.stderr)
    pred = Predictor(args.config, args.weights, overrides=args.overrides, device=args.device,
                     score_thresh=args.score_thresh, batch_size=args.batch_size, optimize=not args.no_optimize)
    src, out_dir = Path(args.input), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        raise FileNotFoundError(f"--input {src} does not exist")
    if src.is_file() and src.suffix.lower() in VIDEO_EXTS:
        records = _run_video(pred, src, out_dir, args.score_thresh)
    else:
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTS) if src.is_dir() else [src]
        if args.limit:
            files = files[: args.limit]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {src}")
        records = []
        for start in range(0, len(files), args.batch_size):
            chunk = files[start:start + args.batch_size]
            arrays = [read_image_rgb(f) for f in chunk]
            for f, arr, det in zip(chunk, arrays, pred(arrays)):
                drawn = draw_detections(arr, det["boxes"], det["scores"], det["labels"], pred.class_names)
                save_rgb(os.fspath(out_dir / f"{f.stem}_det.png"), drawn)
                records.append(_det_json(f.name, det))
    (out_dir / "detections.json").write_text(json.dumps(records, indent=1))
    n = sum(len(r["detections"]) for r in records)
    print(f"wrote {len(records)} result(s) with {n} detections (score >= {args.score_thresh}) to {out_dir}")
    return 0
