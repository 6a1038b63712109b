"""``detres convert --from {torchvision,detectron2,detr,deformable_detr,dino,...} SRC (DST | --out DIR)``.

Reads a reference checkpoint, maps it onto the model a detres config builds (checking every
shape), and writes ``{"format": "detres", "model": state_dict, "dataset_meta": {...}}``. With
``--out DIR`` it writes DIR/model.pth and DIR/config.yaml (the model's config, self-contained); for
``--from deformable_detr`` and ``--from dino`` / ``--from rtdetr`` that config is read from the checkpoint's tensors
(layers, FFN width, levels, points, queries, classes, refinement / shared heads), so no config is needed. The ``--from``
choices are the registered converters, so new layouts need no edit here; the work is
``detres.checkpoint.convert``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detres.checkpoint.convert import converter_names
from detres.cli.common import plain_text


def main(argv: list[str] | None = None) -> int:
    """Convert SRC (``--from`` layout) into a detres checkpoint at DST, or DIR/model.pth + DIR/config.yaml."""
    parser = argparse.ArgumentParser(prog="detres convert", description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--from", dest="fmt", required=True, choices=converter_names(), help="source layout")
    parser.add_argument("src", help="reference checkpoint (.pth / .pkl)")
    parser.add_argument("dst", nargs="?", default=None, help="detres checkpoint to write (or use --out DIR)")
    parser.add_argument("--out", default=None, help="folder to write model.pth and config.yaml into")
    parser.add_argument("--config", default=None,
                        help="config of the target model (default: read from the checkpoint for deformable_detr "
                             "dino and rtdetr, else per layout)")
    parser.add_argument("--nheads", type=int, default=8,
                        help="deformable_detr / dino / rtdetr: attention heads (the tensors cannot tell heads from points; "
                             "official default 8)")
    parser.add_argument("--num-queries", type=int, default=None,
                        help="deformable_detr two-stage / rtdetr: queries selected (no tensor holds it; official 300)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_intermixed_args(argv)
    # argparse gives the first override to the optional positional when --out is used
    if args.out is not None and args.dst is not None:
        if "=" not in args.dst:
            parser.error("give either DST or --out DIR, not both")
        args.overrides, args.dst = [args.dst, *args.overrides], None
    if args.out is None and args.dst is None:
        parser.error("give DST (a checkpoint file) or --out DIR")

    import detres
    from detres.checkpoint.convert import (CONFIG_READERS, config_from_checkpoint, convert_checkpoint,
                                           default_config, write_config)
    from detres.config import apply_overrides

    dst = args.dst
    if args.out is not None:
        out = Path(args.out)
        cfg_path, dst = out / "config.yaml", out / "model.pth"
        if args.config is None and args.fmt in CONFIG_READERS:
            cfg, header = config_from_checkpoint(args.fmt, args.src, nheads=args.nheads, num_queries=args.num_queries)
            write_config(apply_overrides(cfg, args.overrides), cfg_path, header)
        else:
            cfg = detres.load_config(args.config or default_config(args.fmt, args.src), args.overrides)
            write_config(cfg, cfg_path, f"Target model of `tools/convert.py --from {args.fmt}`.")
        cfg = detres.load_config(cfg_path)
    else:
        cfg = detres.load_config(args.config or default_config(args.fmt, args.src), args.overrides)
    result = convert_checkpoint(detres.build_model(cfg), args.src, args.fmt, dst,
                                num_classes=int(cfg.get("num_classes", 0) or 0))
    where = f"{dst} and {Path(args.out) / 'config.yaml'}" if args.out is not None else str(dst)
    print(f"wrote {where} ({args.fmt} -> detres); missing in source: {len(result.missing_keys)}, "
          f"unused from source: {len(result.unexpected_keys)}")
    for k in result.missing_keys[:10]:
        print(f"  missing: {k}")
    for k in result.unexpected_keys[:10]:
        print(f"  unused: {k}")
    return 0
