"""``detres convert --from {torchvision,detectron2,detr,...} SRC DST [--config C] [key=value ...]``.

Reads a reference checkpoint, maps it onto the model a detres config builds (checking every
shape), and writes ``{"format": "detres", "model": state_dict, "dataset_meta": {...}}``. The
``--from`` choices are the registered converters, so new layouts need no edit here.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

#: config used when ``--config`` is not given, per source layout (``_v2`` picked from the keys).
DEFAULT_CONFIGS = {
    "torchvision": "configs/faster_rcnn/faster_rcnn_r50_fpn_torchvision_coco.yaml",
    "torchvision_v2": "configs/faster_rcnn/faster_rcnn_r50_fpn_v2_torchvision_coco.yaml",
    "detectron2": "configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.yaml",
}


def converter_names() -> list[str]:
    """Names of the registered checkpoint converters."""
    import detres.checkpoint  # noqa: F401  (fills the converter list)
    from detres.checkpoint.loader import _CONVERTERS

    return sorted(c.name for c in _CONVERTERS)


def _default_config(fmt: str, src: Path) -> str:
    from detres.checkpoint.io import read_weights_file, unwrap_state_dict

    if fmt == "torchvision":
        keys = unwrap_state_dict(read_weights_file(src))
        if any(k.startswith("roi_heads.box_head.0.") for k in keys):
            fmt = "torchvision_v2"
    if fmt not in DEFAULT_CONFIGS:
        raise ValueError(f"no default config for --from {fmt}; pass --config CONFIG.yaml of the target model")
    path = Path(__file__).resolve().parents[2] / DEFAULT_CONFIGS[fmt]
    if not path.is_file():
        raise FileNotFoundError(f"default config {path} not found; pass --config")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """Convert SRC (``--from`` layout) into a detres checkpoint at DST."""
    parser = argparse.ArgumentParser(prog="detres convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="fmt", required=True, choices=converter_names(), help="source layout")
    parser.add_argument("src", help="reference checkpoint (.pth / .pkl)")
    parser.add_argument("dst", help="detres checkpoint to write")
    parser.add_argument("--config", default=None, help="config of the target model (default: per layout)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)

    import detres
    from detres.checkpoint.coco_layout import coco_dataset_meta
    from detres.checkpoint.loader import convert_state_dict
    from detres.checkpoint.io import read_weights_file

    cfg = detres.load_config(args.config or _default_config(args.fmt, Path(args.src)), args.overrides)
    model = detres.build_model(cfg)
    obj = read_weights_file(args.src)
    _, sd = convert_state_dict(obj, model, args.fmt)
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{args.src} does not fit the config's model: {'; '.join(bad[:5])}; fix the config (num_classes, depth)")
    result = model.load_state_dict(sd, strict=False)
    num_classes = int(cfg.get("num_classes", 0) or 0)
    meta = obj.get("dataset_meta")
    if meta is None:
        try:
            meta = coco_dataset_meta(num_classes)
        except ValueError:
            meta = None
    out = {"format": "detres", "model": model.state_dict(), "dataset_meta": meta, "converted_from": args.fmt}
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.dst)
    print(f"wrote {args.dst} ({args.fmt} -> detres); missing in source: {len(result.missing_keys)}, "
          f"unused from source: {len(result.unexpected_keys)}")
    for k in result.missing_keys[:10]:
        print(f"  missing: {k}")
    for k in result.unexpected_keys[:10]:
        print(f"  unused: {k}")
    return 0
