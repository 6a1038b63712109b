"""``detres convert-dataset --from {voc,yolo} --root R [--split S] --out A.json``: write COCO json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detres.cli.common import plain_text


def main(argv: list[str] | None = None) -> int:
    """Convert a VOC or YOLO split to a COCO-format json (boxes exactly as annotated)."""
    parser = argparse.ArgumentParser(prog="detres convert-dataset", description=plain_text(__doc__))
    parser.add_argument("--from", dest="fmt", required=True, choices=["voc", "yolo"])
    parser.add_argument("--root", required=True, help="VOC root (Annotations/, JPEGImages/, ImageSets/) or YOLO root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output json")
    parser.add_argument("--class-names", nargs="+", default=None, help="class order (category ids 1..K)")
    parser.add_argument("--difficult", default="keep", choices=["keep", "ignore", "drop"], help="VOC difficult boxes")
    args = parser.parse_args(argv)
    from detres.data.convert import records_to_coco_dict
    from detres.data.voc import voc_records
    from detres.data.yolo import yolo_records

    if args.fmt == "voc":
        records, meta = voc_records(args.root, args.split, args.class_names, args.difficult)
        root = Path(args.root) / "JPEGImages"
    else:
        records, meta = yolo_records(args.root, args.split, args.class_names)
        root = Path(args.root) / "images" / args.split
    data = records_to_coco_dict(records, meta, root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data))
    print(f"wrote {args.out}: {len(data['images'])} images, {len(data['annotations'])} boxes, "
          f"categories {meta.class_names} (image_root: {root})")
    return 0
