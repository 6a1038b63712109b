"""Detection-set comparison used by export parity, benchmarks and equivalence tests."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["compare_detections"]


def compare_detections(
    ours: Sequence[dict[str, Tensor]], ref: Sequence[dict[str, Tensor]], label_offset: int = 1,
    atol: float = 1e-3, score_atol: float = 1e-4,
) -> dict[str, Any]:
    """Per image: same count, and every detection has a reference partner with the same label
    (detres + ``label_offset``), box within ``atol`` and score within ``score_atol``. Matching is by
    set, not by position, so float-level reorderings of near-tied scores do not count as different."""
    max_box, max_score, unmatched, counts, same = 0.0, 0.0, 0, [], True
    for a, b in zip(ours, ref):
        counts.append(int(len(a["boxes"])))
        same &= len(a["boxes"]) == len(b["boxes"])
        if not len(a["boxes"]) or not len(b["boxes"]):
            unmatched += abs(len(a["boxes"]) - len(b["boxes"]))
            continue
        d = (a["boxes"][:, None].double() - b["boxes"][None].double()).abs().amax(-1)
        d[(a["labels"][:, None] + label_offset) != b["labels"][None]] = float("inf")
        best, j = d.min(1)
        sd = (a["scores"].double() - b["scores"][j].double()).abs()
        ok = (best <= atol) & (sd <= score_atol)
        unmatched += int((~ok).sum())
        if bool(ok.any()):
            max_box = max(max_box, float(best[ok].max()))
            max_score = max(max_score, float(sd[ok].max()))
    return {"identical": bool(same and unmatched == 0), "unmatched": unmatched, "max_box_diff": max_box,
            "max_score_diff": max_score, "detections": counts}
