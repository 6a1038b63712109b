"""The 12 COCO stats (pycocotools ``summarize``), per-category tables, and saved PR arrays / plot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detres.evaluation.fast_cocoeval import IOU_THRS, REC_THRS

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _mean(s: np.ndarray) -> float:
    return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))


def _select(ev: dict, ap: bool, iou: float | None, aind: list[int], mind: list[int], k=None) -> np.ndarray:
    """Same indexing as pycocotools' ``_summarize``; ``k`` restricts to one category."""
    s = ev["precision"] if ap else ev["recall"]
    if iou is not None:
        s = s[np.where(iou == IOU_THRS)[0]]
    if k is not None:
        s = s[:, :, [k]] if ap else s[:, [k]]
    return s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]


def summarize(ev: dict, max_dets: list[int], area_labels: list[str], k: int | None = None) -> dict[str, float]:
    """The 12 stats as pycocotools prints them (-1 where undefined); ``k`` = one category only."""
    def stat(ap: bool, iou=None, area="all", md=max_dets[-1]) -> float:
        aind = [i for i, a in enumerate(area_labels) if a == area]
        mind = [i for i, m in enumerate(max_dets) if m == md]
        return _mean(_select(ev, ap, iou, aind, mind, k)) if aind and mind else -1.0

    md = list(max_dets) + [max_dets[-1]] * (3 - len(max_dets))
    vals = [stat(True), stat(True, 0.5, md=md[2]), stat(True, 0.75, md=md[2]), stat(True, None, "small", md[2]),
            stat(True, None, "medium", md[2]), stat(True, None, "large", md[2]), stat(False, md=md[0]),
            stat(False, md=md[1]), stat(False, md=md[2]), stat(False, None, "small", md[2]),
            stat(False, None, "medium", md[2]), stat(False, None, "large", md[2])]
    return dict(zip(STAT_NAMES, vals))


def per_category(ev: dict, max_dets: list[int], area_labels: list[str], cat_ids, names) -> list[dict]:
    """Per class: id, name, AP, AP50, AP75, APs, APm, APl, AR100 (-1 where the class has no GT)."""
    rows = []
    for k, (cid, name) in enumerate(zip(cat_ids, names)):
        s = summarize(ev, max_dets, area_labels, k)
        rows.append({"id": int(cid), "name": name, **{n: s[n] for n in
                     ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}})
    return rows


def format_stats(stats: dict[str, float], max_dets: list[int]) -> str:
    """The 12 lines pycocotools' ``summarize`` prints."""
    md = list(max_dets) + [max_dets[-1]] * (3 - len(max_dets))
    spec = [(1, "0.50:0.95", "all", md[2]), (1, "0.50", "all", md[2]), (1, "0.75", "all", md[2]),
            (1, "0.50:0.95", "small", md[2]), (1, "0.50:0.95", "medium", md[2]), (1, "0.50:0.95", "large", md[2]),
            (0, "0.50:0.95", "all", md[0]), (0, "0.50:0.95", "all", md[1]), (0, "0.50:0.95", "all", md[2]),
            (0, "0.50:0.95", "small", md[2]), (0, "0.50:0.95", "medium", md[2]), (0, "0.50:0.95", "large", md[2])]
    lines = []
    for (ap, iou, area, m), name in zip(spec, STAT_NAMES):
        title, short = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        lines.append(f" {title:<18} {short} @[ IoU={iou:<9} | area={area:>6s} | maxDets={m:>3d} ] = "
                     f"{stats[name]:0.3f}")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Per-category table in markdown (values in %, '-' where undefined)."""
    cols = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
    out = ["| category | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        vals = ["-" if r[c] < 0 else f"{100 * r[c]:.1f}" for c in cols]
        out.append(f"| {r['name']} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def save_outputs(out_dir: str | Path, ev: dict, metrics: dict, rows: list[dict], cat_ids, names,
                 area_labels: list[str], max_dets: list[int], pr_curve: bool = False) -> None:
    """Write metrics.json-style per-category json, markdown table, PR arrays (npz) and optional PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_category.json").write_text(json.dumps(rows, indent=1))
    (out / "per_category.md").write_text(markdown_table(rows) + "\n")
    np.savez_compressed(out / "pr_arrays.npz", precision=ev["precision"], recall=ev["recall"],
                        scores=ev["scores"], iou_thrs=IOU_THRS, rec_thrs=REC_THRS,
                        cat_ids=np.asarray(cat_ids), cat_names=np.asarray(names),
                        area_labels=np.asarray(area_labels), max_dets=np.asarray(max_dets))
    if pr_curve:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, ax = plt.subplots(figsize=(5, 4))
        for t in (0, 5):
            p = ev["precision"][t, :, :, 0, -1]
            p = np.where(p > -1, p, np.nan)
            ax.plot(REC_THRS, np.nanmean(p, axis=1), label=f"IoU={IOU_THRS[t]:.2f}")
        ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.legend(), ax.grid(True)
        fig.savefig(out / "pr_curve.png", dpi=100)
        plt.close(fig)
