"""``detres convert --from {torchvision,detectron2,detr,...} SRC DST [--config C] [key=value ...]``.

Reads a reference checkpoint, maps it onto the model a detres config builds (checking every
shape), and writes ``{"format": "detres", "model": state_dict, "dataset_meta": {...}}``. The
``--from`` choices are the registered converters, so new layouts need no edit here; the work is
``detres.checkpoint.convert``.
"""
from __future__ import annotations

import argparse

from detres.checkpoint.convert import converter_names
from detres.cli.common import plain_text


def main(argv: list[str] | None = None) -> int:
    """Convert SRC (``--from`` layout) into a detres checkpoint at DST."""
    parser = argparse.ArgumentParser(prog="detres convert", description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--from", dest="fmt", required=True, choices=converter_names(), help="source layout")
    parser.add_argument("src", help="reference checkpoint (.pth / .pkl)")
    parser.add_argument("dst", help="detres checkpoint to write")
    parser.add_argument("--config", default=None, help="config of the target model (default: per layout)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)

    import detres
    from detres.checkpoint.convert import convert_checkpoint, default_config

    cfg = detres.load_config(args.config or default_config(args.fmt, args.src), args.overrides)
    result = convert_checkpoint(detres.build_model(cfg), args.src, args.fmt, args.dst,
                                num_classes=int(cfg.get("num_classes", 0) or 0))
    print(f"wrote {args.dst} ({args.fmt} -> detres); missing in source: {len(result.missing_keys)}, "
          f"unused from source: {len(result.unexpected_keys)}")
    for k in result.missing_keys[:10]:
        print(f"  missing: {k}")
    for k in result.unexpected_keys[:10]:
        print(f"  unused: {k}")
    return 0
