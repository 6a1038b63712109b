"""detres' own COCOeval (bbox): vectorized numpy with pycocotools' exact arithmetic and tie rules.

pycocotools (``COCOeval.evaluateImg`` / ``accumulate``) matches detections greedily, one (image,
category) at a time in Python. Here all groups advance together: at step r every group's r-th best
detection is matched at once, for all IoU thresholds, so Python loops run over detection ranks (<= maxDets),
area ranges and categories only. Every number is computed with the same float64 operations in the same
order as pycocotools (``bbIou`` in maskApi.c, cumsum / divide / envelope / searchsorted), so the
precision and recall arrays are bitwise equal to pycocotools'.
"""
from __future__ import annotations

import numpy as np

from detres.evaluation.coco_data import Detections, GroundTruth

#: pycocotools' default IoU thresholds [T] and recall points [R] (same linspace calls, same floats).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def pair_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes d [P, 4], g [P, 4]; crowd [P] GTs use the detection area as union.

    Same operations as pycocotools' ``bbIou`` so the float64 results are identical.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    da = d[:, 2] * d[:, 3]
    ga = g[:, 2] * g[:, 3]
    ok = (w > 0) & (h > 0)
    i = w * h
    u = np.where(crowd, da, da + ga - i)
    out = np.zeros(len(d), dtype=np.float64)
    np.divide(i, u, out=out, where=ok)
    return out


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    """For sorted ``keys`` [N]: index of the first element of each element's run."""
    return np.searchsorted(keys, keys, side="left")


def _match(gt: GroundTruth, dt: Detections, area_rngs: np.ndarray, max_det: int):
    """Greedy matching of every (image, category) group, as ``COCOeval.evaluateImg``.

    Returns dets (sorted by group then score, top ``max_det`` per group) as (order, rank), and per area
    range a: tp [A, T, M], fp [A, T, M] bool; plus gt_ignore [A, N].
    """
    K = max(len(gt.cat_ids), 1)
    T, A = len(IOU_THRS), len(area_rngs)
    gkey = gt.img * K + gt.cat
    gorder = np.argsort(gkey, kind="stable")
    gkey = gkey[gorder]
    g_box, g_area, g_crowd, g_id = gt.boxes[gorder], gt.area[gorder], gt.crowd[gorder], gt.ann_id[gorder]
    dkey = dt.img * K + dt.cat
    dorder = np.lexsort((-dt.scores, dkey))  # stable: tied scores keep results-file order
    rank = np.arange(len(dorder)) - _segment_starts(dkey[dorder])
    keep = rank < max_det
    dorder, rank = dorder[keep], rank[keep]
    dkey = dkey[dorder]
    d_box, d_area = dt.boxes[dorder], dt.area[dorder]
    M = len(dorder)

    # every (detection, GT) pair of the same image and category
    gs = np.searchsorted(gkey, dkey, side="left")
    ng = np.searchsorted(gkey, dkey, side="right") - gs
    pd = np.repeat(np.arange(M), ng)
    local = np.arange(len(pd)) - np.repeat(np.cumsum(ng) - ng, ng)
    pg = np.repeat(gs, ng) + local
    iou = pair_iou(d_box[pd], g_box[pg], g_crowd[pg])
    # pycocotools scans GTs (non-ignored first, then file order) keeping the last one with the highest
    # IoU >= threshold; ignored GTs only when no regular GT qualified. Sort each detection's pairs by
    # (regular, iou, position): the best pair is then the last eligible one.
    base = np.lexsort((local, iou))
    step_det = (rank[pd] * (M + 1) + pd)[base] * 2  # rank-major: each step r is one contiguous slice

    tp = np.zeros((A, T, M), dtype=bool)
    fp = np.zeros((A, T, M), dtype=bool)
    g_ig = np.zeros((A, len(gkey)), dtype=bool)
    thr = IOU_THRS[:, None]
    for a, (lo, hi) in enumerate(area_rngs):
        gig = g_crowd | (g_area < lo) | (g_area > hi)
        g_ig[a] = gig
        o = base[np.argsort(step_det + (~gig[pg][base]), kind="stable")]
        o_d, o_g, o_iou = pd[o], pg[o], iou[o]
        bounds = np.searchsorted(rank[o_d], np.arange(max_det + 1), side="left")
        matched = np.zeros((T, M), dtype=bool)
        m_ig = np.zeros((T, M), dtype=bool)
        m_id0 = np.zeros((T, M), dtype=bool)
        gtm = np.zeros((T, len(gkey)), dtype=bool)
        for r in range(max_det):
            s, e = bounds[r], bounds[r + 1]
            if s == e:
                continue
            gi, di = o_g[s:e], o_d[s:e]
            elig = (o_iou[s:e] >= thr) & (~gtm[:, gi] | g_crowd[gi])
            starts = np.flatnonzero(np.r_[True, di[1:] != di[:-1]])
            best = np.maximum.reduceat(np.where(elig, np.arange(1, e - s + 1), 0), starts, axis=1)
            tt, ss = np.nonzero(best)
            mg = gi[best[tt, ss] - 1]
            md = di[starts[ss]]
            gtm[tt, mg] = True
            matched[tt, md] = True
            m_ig[tt, md] = gig[mg]
            m_id0[tt, md] = g_id[mg] == 0
        # pycocotools stores the matched GT id; id 0 reads as 'unmatched' afterwards
        nz = matched & ~m_id0
        d_ig = m_ig | (~nz & ((d_area < lo) | (d_area > hi)))
        tp[a] = nz & ~d_ig
        fp[a] = ~nz & ~d_ig
    return dorder, rank, tp, fp, g_ig, gorder


def evaluate(gt: GroundTruth, dt: Detections, max_dets: tuple[int, ...] = (1, 10, 100),
             area_rngs: list[tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
    """COCOeval bbox ``evaluate`` + ``accumulate``.

    Returns precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M] (-1 where undefined),
    exactly as ``COCOeval.eval``.
    """
    max_dets = sorted(int(m) for m in max_dets)
    rngs = np.asarray(area_rngs if area_rngs is not None else
                      [[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]], dtype=np.float64)
    T, R, K, A, Mn = len(IOU_THRS), len(REC_THRS), len(gt.cat_ids), len(rngs), len(max_dets)
    precision = -np.ones((T, R, K, A, Mn))
    recall = -np.ones((T, K, A, Mn))
    scores = -np.ones((T, R, K, A, Mn))
    if K == 0:
        return {"precision": precision, "recall": recall, "scores": scores}
    dorder, rank, tp, fp, g_ig, gorder = _match(gt, dt, rngs, max_dets[-1])
    d_cat, d_img, d_score = dt.cat[dorder], dt.img[dorder], dt.scores[dorder]
    g_cat = gt.cat[gorder]
    # accumulate's order: per category, score descending; ties by image then rank (concatenation order)
    order = np.lexsort((rank, d_img, -d_score, d_cat))
    eps = np.spacing(1)
    for m, max_det in enumerate(max_dets):
        sel = order[rank[order] < max_det]
        cats = d_cat[sel]
        bounds = np.searchsorted(cats, np.arange(K + 1), side="left")
        sc_all = d_score[sel]
        for a in range(A):
            npig = np.bincount(g_cat[~g_ig[a]], minlength=K)
            tps_all, fps_all = tp[a][:, sel], fp[a][:, sel]
            for k in range(K):
                if npig[k] == 0:
                    continue
                s, e = bounds[k], bounds[k + 1]
                nd = e - s
                tp_sum = np.cumsum(tps_all[:, s:e], axis=1).astype(dtype=float)
                fp_sum = np.cumsum(fps_all[:, s:e], axis=1).astype(dtype=float)
                rc = tp_sum / npig[k]
                pr = tp_sum / (fp_sum + tp_sum + eps)
                recall[:, k, a, m] = rc[:, -1] if nd else 0
                q = np.zeros((T, R))
                ss = np.zeros((T, R))
                if nd:
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    sc = sc_all[s:e]
                    for t in range(T):
                        inds = np.searchsorted(rc[t], REC_THRS, side="left")
                        ok = inds < nd
                        q[t, ok] = pr[t, inds[ok]]
                        ss[t, ok] = sc[inds[ok]]
                precision[:, :, k, a, m] = q
                scores[:, :, k, a, m] = ss
    return {"precision": precision, "recall": recall, "scores": scores}
