"""Bar chart of contender/baseline time ratios from a pytest-benchmark JSON (log scale).

    python docs/plot_performance.py .benchmarks/full.json docs/performance.png

One bar per (group, contender, baseline) pair against the fused PyTorch baselines (GroupNorm, LayerNorm,
Linear, LinearReLU, MC): the median of its per-window ratios, with their range as the whisker (a run of one
window: min/min..max/max over rounds); the committed threshold is drawn as a tick.
Needs matplotlib (not a dependency of the package).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rln_verified.bench import GateError, Row, Thresholds, evaluate, load_run, load_thresholds

FUSED = {"GroupNorm", "LayerNorm", "Linear", "LinearReLU", "MC", "NaiveBBB", "NaiveLR"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("json")
    p.add_argument("png")
    p.add_argument("--thresholds", default="benchmarks/thresholds.toml")
    p.add_argument("--markdown", default=None, help="also write the table of all ratios as Markdown here")
    args = p.parse_args(argv)
    run = load_run(args.json)
    try:
        thr = load_thresholds(args.thresholds)
    except GateError:
        thr = Thresholds()  # plot without threshold ticks
    rows = [r for r in evaluate(run, Thresholds()) if r.metric == "time" and r.baseline in FUSED]
    committed = dict(thr.time)
    labels = [f"{r.group}\n{r.contender} / {r.baseline}" for r in rows]
    ratios = [r.ratio for r in rows]
    lo = [max(r.ratio - min(r.ratio_min, r.ratio_max), 0.0) for r in rows]
    hi = [max(max(r.ratio_min, r.ratio_max) - r.ratio, 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    ys = list(range(len(rows)))
    colors = ["tab:gray" if r.contender.startswith(("Seed", "Naive")) else "tab:blue" for r in rows]
    ax.barh(ys, ratios, xerr=[lo, hi], color=colors, ecolor="black", capsize=2)
    for y, r in zip(ys, rows):
        t = committed.get(r.key)
        if t is not None:
            ax.plot([t, t], [y - 0.4, y + 0.4], color="tab:red", lw=2)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(ys, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("median time ratio to baseline (log); red tick = threshold; grey = seed/naive reference")
    machine = load_machine(args.json)
    ax.set_title(f"rln_verified benchmarks, CPU float32 ({machine})", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=130)
    print(f"wrote {args.png} ({len(rows)} ratios)")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(evaluate(run, Thresholds()), committed, machine))
        print(f"wrote {args.markdown}")
    return 0


def markdown_table(rows: list[Row], committed: dict[str, float], machine: str) -> str:
    n = max((r.windows for r in rows), default=1)
    out = [
        f"Machine: {machine}. Ratios are contender / baseline, CPU float32, one thread: the median of the",
        f"per-window ratios ({n} windows; the seed references run in the first only), with min and max their range",
        "(benchmarks/README.md, \"Windows\").",
        "",
        "| group | contender | baseline | median ratio | min | max | threshold |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = committed.get(r.key) if r.metric == "time" else None
        if r.metric == "memory":
            out.append(f"| {r.group} (saved bytes) | {r.contender} | {r.baseline} | {r.ratio:.3f} | | | |")
            continue
        thr = "-" if t is None else f"{t:g}"
        out.append(f"| {r.group} | {r.contender} | {r.baseline} | {r.ratio:.3g} | {r.ratio_min:.3g} | "
                   f"{r.ratio_max:.3g} | {thr} |")
    return "\n".join(out) + "\n"


def load_machine(path: str) -> str:
    info = json.loads(Path(path).read_text()).get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", info.get("processor", "?"))
    return f"{cpu}, {info.get('node', '')}".strip(", ")


if __name__ == "__main__":
    sys.exit(main())
