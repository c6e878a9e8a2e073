"""Statistics of the study: t intervals, paired tests, AUROC by ranks, ECE, Spearman, Holm's correction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the two-sided Student t interval; half-width NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan
    t = float(stats.t.ppf(0.5 + level / 2, len(v) - 1))
    return m, t * float(v.std(ddof=1)) / math.sqrt(len(v))


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """``a - b`` paired on seed: mean difference, its 95% t half-width, the paired t-test's and Wilcoxon's
    two-sided p-values (1.0 where every difference is 0; NaN for fewer than 2 pairs)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.shape} and {y.shape}")
    d = x - y
    m, h = mean_ci([float(v) for v in d])
    if len(d) < 2:
        return {"diff": m, "ci": h, "p_t": math.nan, "p_wilcoxon": math.nan}
    if np.all(d == 0):
        return {"diff": 0.0, "ci": 0.0, "p_t": 1.0, "p_wilcoxon": 1.0}
    p_t = float(stats.ttest_rel(x, y).pvalue) if float(d.std(ddof=1)) > 0 else 0.0
    p_w = float(stats.wilcoxon(d).pvalue)
    return {"diff": m, "ci": h, "p_t": p_t, "p_wilcoxon": p_w}


def auroc(negatives: NDArray[np.float64], positives: NDArray[np.float64]) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney statistic from mid-ranks."""
    n0, n1 = len(negatives), len(positives)
    if n0 == 0 or n1 == 0:
        raise ValueError("auroc needs at least one negative and one positive score")
    ranks = stats.rankdata(np.concatenate([negatives, positives]))
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def ece(probs: NDArray[np.float64], labels: NDArray[np.int64], bins: int = 15) -> float:
    """Expected calibration error: confidence = max probability, ``bins`` equal-width bins on [0, 1], each bin's
    |accuracy - mean confidence| weighted by its share of the samples."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bin k holds (edges[k], edges[k+1]]
    total = 0.0
    for k in range(bins):
        sel = idx == k
        if sel.any():
            total += float(sel.mean()) * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return total


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN where one side is constant."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return math.nan
    return float(stats.spearmanr(xa, ya).statistic)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p)
    n = len(p)
    adj = np.empty(n)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, float(p[i]) * (n - rank)))
        adj[i] = running
    return [float(a) for a in adj]


def verdict(seed_diff: float, diff: float, p: float, alpha: float = 0.05) -> str:
    """The seed's claimed difference ``seed_diff`` against ours (``diff``, p-value ``p``): same sign and
    significant: reproduced; opposite sign and significant: reversed; else not reproduced."""
    if not p < alpha:
        return "not reproduced (no significant difference)"
    return "reproduced" if (diff > 0) == (seed_diff > 0) else "reversed"
