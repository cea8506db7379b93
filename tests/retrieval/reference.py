"""Brute-force references: dense scores, a stable argsort, scikit-learn's average precision."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def dense_scores(queries, gallery, renormalize=True):
    dim = min(queries.shape[1], gallery.shape[1])
    q, g = queries[:, :dim].astype(np.float64), gallery[:, :dim].astype(np.float64)
    if renormalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def reference_metrics(scores, relevant, leave_one_out, ks=(1, 5, 10)):
    """Per-query top-k, mAP (sklearn) and mAP@R with the tie rule "ascending gallery row"."""
    out = {f"top{k}": [] for k in ks}
    out["map"], out["map@r"] = [], []
    for i in range(scores.shape[0]):
        keep = np.ones(scores.shape[1], dtype=bool)
        if leave_one_out:
            keep[i] = False
        rows = np.flatnonzero(keep)
        s, rel = scores[i, rows], relevant[i, rows]
        if rel.sum() == 0:
            continue
        order = np.argsort(-s, kind="stable")
        ranked = rel[order]
        for k in ks:
            out[f"top{k}"].append(bool(ranked[:k].any()))
        out["map"].append(average_precision_score(rel, s))
        big_r = int(rel.sum())
        hits = ranked[:big_r]
        precision = np.cumsum(hits) / np.arange(1, big_r + 1)
        out["map@r"].append(float((precision * hits).sum() / big_r))
    return {name: float(np.mean(values)) for name, values in out.items()}
