"""``detres plot-logs --logs output/metrics.jsonl [more.jsonl ...] --out curves.png``: loss curves
(every ``loss*`` term) and, when the run logged evaluations, the AP curve, into one PNG."""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from detres.cli.common import plain_text
from detres.utils.extras import EXIT_MISSING_EXTRA, MissingExtraError, import_extra


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl (lines cut by a crash are skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot(logs: list[str | Path], out: str | Path, smooth: int = 1) -> dict[str, int]:
    """Draw the curves of ``logs`` into ``out``; returns {curve name: number of points}."""
    matplotlib = import_extra("matplotlib", "plotting loss curves")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {str(p): read_metrics(p) for p in logs}
    has_eval = any(any(k.startswith("eval/") for r in recs for k in r) for recs in runs.values())
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(12 if has_eval else 7, 4.5), squeeze=False)
    counts: dict[str, int] = {}
    for name, recs in runs.items():
        label = Path(name).parent.name or name
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in recs:
            for k, v in r.items():
                if (k.startswith("loss") or k in ("eval/AP", "eval/AP50")) and isinstance(v, (int, float)):
                    series[k].append((int(r["iter"]), float(v)))
        for k, pts in sorted(series.items()):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax = axes[0][1] if k.startswith("eval/") else axes[0][0]
            style = "-o" if k.startswith("eval/") else "-"
            ax.plot(xs, ys if k.startswith("eval/") else _smooth(ys, smooth), style,
                    lw=2.0 if k == "loss" else 1.0, label=f"{label}: {k}" if len(runs) > 1 else k)
            counts[f"{label}:{k}"] = len(pts)
    axes[0][0].set(xlabel="iteration", ylabel="loss", title="training losses")
    axes[0][0].legend(fontsize=8)
    axes[0][0].grid(alpha=0.3)
    if has_eval:
        axes[0][1].set(xlabel="iteration", ylabel="AP", title="evaluation")
        axes[0][1].legend(fontsize=8)
        axes[0][1].grid(alpha=0.3)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Plot metrics.jsonl files into a PNG."""
    parser = argparse.ArgumentParser(prog="detres plot-logs", description=plain_text(__doc__))
    parser.add_argument("--logs", nargs="+", required=True, help="metrics.jsonl file(s) written by training")
    parser.add_argument("--out", default="curves.png", help="PNG to write")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window for the loss curves")
    args = parser.parse_args(argv)
    missing = [p for p in args.logs if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"metrics file(s) not found: {', '.join(missing)}")
    try:
        counts = plot(args.logs, args.out, args.smooth)
    except MissingExtraError as e:  # an optional extra: one line, its own exit code (main_job goes on)
        print(f"plot-logs: {e}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    if not counts:
        raise ValueError(f"{', '.join(args.logs)}: no loss or eval entries to plot")
    print(f"wrote {args.out} ({', '.join(f'{k}: {n} points' for k, n in counts.items())})")
    return 0
