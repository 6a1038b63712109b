"""Detection-set comparison used by export parity, benchmarks and equivalence tests."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["compare_detections"]


def _match_image(a: dict[str, Tensor], b: dict[str, Tensor], label_offset: int, atol: float,
                 score_atol: float) -> tuple[int, Tensor, Tensor]:
    """One-to-one matching of one image's detections ``a`` against ``b``.

    Returns (matched pairs, their box diffs [M], their score diffs [M]). A pair is admissible when the
    labels agree (``a + label_offset == b``), the boxes ([N, 4] xyxy) differ by at most ``atol`` in every
    coordinate and the scores by at most ``score_atol``. The Hungarian solver maximises the number of
    admissible pairs first (an inadmissible pair costs more than all admissible ones together), then
    minimises the normalised distance, so each reference detection is used at most once.
    """
    box = (a["boxes"][:, None].double() - b["boxes"][None].double()).abs().amax(-1)
    score = (a["scores"][:, None].double() - b["scores"][None].double()).abs()
    ok = ((a["labels"][:, None] + label_offset) == b["labels"][None]) & (box <= atol) & (score <= score_atol)
    cost = torch.maximum(box / max(atol, 1e-300), score / max(score_atol, 1e-300))
    big = float(min(box.shape) + 1) * 2.0
    cost = torch.where(ok, cost.clamp(max=1.0), torch.full_like(cost, big))
    rows, cols = linear_sum_assignment(cost.numpy())
    rows_t, cols_t = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    keep = ok[rows_t, cols_t]
    rows_t, cols_t = rows_t[keep], cols_t[keep]
    return int(keep.sum()), box[rows_t, cols_t], score[rows_t, cols_t]


def compare_detections(
    ours: Sequence[dict[str, Tensor]], ref: Sequence[dict[str, Tensor]], label_offset: int = 1,
    atol: float = 1e-3, score_atol: float = 1e-4,
) -> dict[str, Any]:
    """Compare two lists (one entry per image) of ``{"boxes" [N,4] xyxy, "scores" [N], "labels" [N]}``.

    Per image the detections are paired one to one (Hungarian matching within class): a pair needs the
    same label (detres + ``label_offset``), box within ``atol`` and score within ``score_atol``. Matching
    is by set, not by position, so float-level reorderings of near-tied scores do not count as
    different, but a reference detection partners at most one of ours: ``[A, A]`` against ``[A, B]``
    leaves one unmatched.

    Returns ``identical`` (same counts and nothing unmatched), ``unmatched`` (per image, detections of
    the larger set without a partner, summed), ``max_box_diff`` / ``max_score_diff`` over matched pairs,
    and ``detections`` (our count per image).
    """
    max_box, max_score, unmatched, counts, same = 0.0, 0.0, 0, [], len(ours) == len(ref)
    for a, b in zip(ours, ref):
        n, m = len(a["boxes"]), len(b["boxes"])
        counts.append(int(n))
        same &= n == m
        if not n or not m:
            unmatched += abs(n - m)
            continue
        matched, box, score = _match_image(a, b, label_offset, atol, score_atol)
        unmatched += max(n, m) - matched
        if matched:
            max_box = max(max_box, float(box.max()))
            max_score = max(max_score, float(score.max()))
    return {"identical": bool(same and unmatched == 0), "unmatched": unmatched, "max_box_diff": max_box,
            "max_score_diff": max_score, "detections": counts}
