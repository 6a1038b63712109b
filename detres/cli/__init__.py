"""``detres <command>``: one console script over every tool."""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module with a ``main(argv)`` function, one line for ``detres --help``).
COMMANDS = {
    "train": ("detres.cli.train", "train a detector from a config (also --resume, --eval-only)"),
    "eval": ("detres.cli.eval", "COCO-evaluate weights on data.val, or score a results json"),
    "demo": ("detres.cli.demo", "draw a trained model's detections on images or a video"),
    "benchmark": ("detres.cli.benchmark", "latency, throughput, memory, FLOPs and parameters of a model"),
    "convert": ("detres.cli.convert", "convert torchvision / detectron2 / DETR-family checkpoints"),
    "export": ("detres.cli.export", "export a model to ONNX or torch.export"),
    "print-config": ("detres.cli.print_config", "print a config fully resolved, with overrides applied"),
    "list": ("detres.cli.list_registries", "list the registered backbones, necks, heads, datasets..."),
    "check-dataset": ("detres.cli.check_dataset", "check a COCO json and its images; every problem with its id"),
    "convert-dataset": ("detres.cli.convert_dataset", "convert a Pascal VOC or YOLO dataset to COCO json"),
    "make-shapes": ("detres.cli.make_shapes", "generate the synthetic shapes dataset (COCO format)"),
    "plot-logs": ("detres.cli.plot_logs", "plot loss curves from metrics.jsonl (needs detres[viz])"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``detres <command> [args]`` to the command's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: detres <command> [options]   (detres <command> --help for its options)\n\ncommands:\n"
              + "\n".join(lines))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        from detres.registry import close_matches

        hint = close_matches(cmd, COMMANDS)
        print(f"detres: unknown command '{cmd}'" + (f"; did you mean {hint[0]}?" if hint else ""), file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[cmd][0])
    except ModuleNotFoundError as e:
        print(f"detres: command '{cmd}' is not available in this build ({e})", file=sys.stderr)
        return 2
    from detres.cli.common import USER_ERROR, user_error_message, user_errors

    try:
        return int(module.main(rest) or 0)
    except user_errors() as e:
        # A user error (config typo, missing file): one clear line, exit code 2, no traceback.
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
