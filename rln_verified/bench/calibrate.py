"""Propose thresholds from repeated runs on an unchanged tree.

``python -m rln_verified.bench.calibrate RUN1.json RUN2.json ... [--margin 1.15]`` prints, for every
contender/baseline pair, the max time ratio over the runs, its spread, and the proposal ``max * margin``.
It edits nothing: copy the lines you accept into ``benchmarks/thresholds.toml`` under the rules of
``benchmarks/README.md``. Memory ratios are exact; it checks that they agree across runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Sequence

from rln_verified.bench._gate import GateError, Thresholds, evaluate, load_run


def propose(runs: Sequence[str], margin: float) -> tuple[list[str], list[str]]:
    time_ratios: dict[str, list[float]] = defaultdict(list)
    mem_ratios: dict[str, dict[str, set[float]]] = defaultdict(lambda: defaultdict(set))
    for path in runs:
        for row in evaluate(load_run(path), Thresholds()):
            if row.metric == "time":
                time_ratios[row.key].append(row.ratio)
            else:
                mem_ratios[row.key][row.group].add(round(row.ratio, 12))
    time_lines = []
    for key in sorted(time_ratios):
        rs = time_ratios[key]
        prop = math.ceil(max(rs) * margin * 100) / 100
        time_lines.append(
            f'"{key}" = {prop:g}   # max {max(rs):.3g}, min {min(rs):.3g} over {len(rs)} ratios, margin {margin:g}'
        )
    mem_lines = []
    for key in sorted(mem_ratios):
        # one exact ratio per shape (group); each must be the same in every run
        per_group = mem_ratios[key]
        vals = sorted(set().union(*per_group.values()))
        varying = sorted(g for g, v in per_group.items() if len(v) > 1)
        note = "identical in every run" if not varying else f"NOT deterministic in {varying}"
        mem_lines.append(f'"{key}" = {math.ceil(max(vals) * 1000) / 1000:g}   # worst exact ratio {max(vals):.6g} '
                         f'over {len(per_group)} shapes, {note}')
    return time_lines, mem_lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rln_verified.bench.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="pytest-benchmark JSON files from repeated full runs")
    p.add_argument("--margin", type=float, default=1.15, help="factor on the max observed ratio (default 1.15)")
    args = p.parse_args(argv)
    try:
        time_lines, mem_lines = propose(args.runs, args.margin)
    except GateError as exc:
        print(f"calibrate: error: {exc}", file=sys.stderr)
        return 2
    print("[time]   # proposals; cap each at its issue target (README)")
    print("\n".join(time_lines))
    print("\n[memory]")
    print("\n".join(mem_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
