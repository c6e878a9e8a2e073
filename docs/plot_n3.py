"""docs/n3.png: the N3 adversarial search (Hypothesis with target()) on our four layers: the best ratio
||dy/dx||_2 sqrt(v+eps) / max|gamma| found so far, against the proven gradient constant K.

    python docs/plot_n3.py [--profile thorough]

Each dot is one example's ratio; the line is the best so far. The pinned examples come first.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from rln_verified.verify._core import get_check, run_check
from rln_verified.verify._profiles import profile_settings
from rln_verified.verify.norm import our_subjects

OUT = Path(__file__).resolve().parent / "n3.png"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="thorough")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for subject in our_subjects():
        check = get_check(f"N3/{subject.name}")
        margins: list[float] = []

        def run(case: Any, device: torch.device, dtype: torch.dtype, _inner: Any = check.run,
                _m: list[float] = margins) -> float:
            m = float(_inner(case, device, dtype))
            _m.append(m)
            return m

        result = run_check(dataclasses.replace(check, run=run), "cpu", torch.float64,
                           settings_=profile_settings(args.profile))
        k = float(subject.info["K"])
        best, cur = [], 0.0
        for m in margins:
            cur = max(cur, m)
            best.append(cur * k)  # margin = ratio / K
        xs = range(1, len(best) + 1)
        (line,) = ax.plot(xs, best, label=f"{subject.name} (K = {k:.3g})")
        ax.scatter(xs, [m * k for m in margins], s=3, alpha=0.3, color=line.get_color())
        ax.axhline(k, ls="--", lw=0.8, color=line.get_color())
        print(f"{subject.name}: best ratio {cur * k:.4g} vs K {k:.4g} (margin {result.worst_margin:.3g}, "
              f"{result.examples_tried} examples)", file=sys.stderr)
    ax.set_xscale("log")
    ax.set_xlabel(f"examples tried (Hypothesis, profile {args.profile}, float64)")
    ax.set_ylabel("best ||dy/dx|| sqrt(v+eps) / max|gamma|")
    ax.set_title("N3: adversarial search vs the proven constant K (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
