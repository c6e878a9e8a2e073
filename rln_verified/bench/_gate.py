"""The ratio gate: contender median / baseline median from ONE pytest-benchmark run, against committed thresholds.

How a run is read
-----------------
Every benchmark records in ``extra_info``:

* ``kind``: the family, e.g. ``"norm2d.fwd_bwd"``; thresholds are keyed by it, so one threshold covers every
  shape of a family;
* ``name``: what was timed, e.g. ``"BayesianRLayerNorm2d"`` or ``"GroupNorm"``;
* ``vs``: the names of its baselines (an empty list for a baseline);
* ``shape``, ``dtype``, ``device``: for the record;
* optionally ``saved_bytes``: the exact bytes saved for backward (see ``saved_bytes``);
* optionally ``window``: which pass over the suite it belongs to (default 0; see below).

A contender is paired with each baseline named in ``vs`` that has the same pytest-benchmark ``group`` and the
same ``window`` in the same run. The time ratio is ``median(contender) / median(baseline)``; when both record
``saved_bytes`` a memory ratio is formed as well.

Windows: ``benchmarks/conftest.py`` runs the whole suite ``RLN_BENCH_WINDOWS`` times in a row (3 by default), so
each pair is measured in several time windows spread over the run. A pair's reported ratio is the median of its
per-window ratios, and ``min..max`` is their range. On a shared VM whose speed drifts over seconds, one slow
window then moves a ratio by at most the spread of the others. With a single window, ``min..max`` is the
ratio of the contender's min (max) round to the baseline's.

Thresholds
----------
``benchmarks/thresholds.toml`` holds ``[time]`` and ``[memory]`` tables keyed ``"KIND:CONTENDER/BASELINE"``.
A time ratio passes when ``ratio <= threshold * margin`` (``--margin`` widens the time thresholds for the quick
mode, which takes fewer rounds). Memory counts are exact, so ``--margin`` never applies to them. A pair with no
threshold is reported as ``info`` (an error with ``--strict``). A threshold that no pair in the run matched is
an error: a contender that stopped running must not pass silently.

Exit status: 0 all pass, 1 some ratio exceeds its threshold, 2 the input is unusable (unreadable JSON, missing
``extra_info``, a baseline named in ``vs`` absent from the group, an unmatched threshold).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_THRESHOLDS = Path("benchmarks") / "thresholds.toml"


class GateError(ValueError):
    """The run or the thresholds cannot be gated (exit status 2)."""


@dataclass(frozen=True)
class Measurement:
    group: str
    kind: str
    name: str
    vs: tuple[str, ...]
    median: float
    min: float
    max: float
    rounds: int
    saved_bytes: int | None
    extra: Mapping[str, Any]
    window: int = 0


@dataclass(frozen=True)
class Thresholds:
    """The committed limits on the ratios, by ``KIND:CONTENDER/BASELINE`` key (``benchmarks/thresholds.toml``)."""

    time: Mapping[str, float] = field(default_factory=dict)
    memory: Mapping[str, float] = field(default_factory=dict)
    quick_margin: float = 1.0
    # The "must" targets, reported (never gated): a threshold may hold a ratio above its target so that it
    # cannot regress while the target is open.
    target: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One contender/baseline pair's ratio (time or memory), its threshold and its verdict."""

    metric: str  # "time" or "memory"
    group: str
    key: str  # "KIND:CONTENDER/BASELINE"
    contender: str
    baseline: str
    ratio: float
    ratio_min: float  # min/min over rounds (time) or the ratio itself (memory)
    ratio_max: float  # max/max over rounds (time) or the ratio itself (memory)
    threshold: float | None  # as committed
    limit: float | None  # threshold * margin for time, threshold for memory
    verdict: str  # "pass", "FAIL" or "info"
    shape: str = ""
    windows: int = 1  # how many per-window ratios this row's median is over

    def as_dict(self) -> dict[str, Any]:
        """The row's fields as a JSON-ready dict (``--rows-json``)."""
        return dict(self.__dict__)


def pair_key(kind: str, contender: str, baseline: str) -> str:
    return f"{kind}:{contender}/{baseline}"


def _measurement(bench: Mapping[str, Any]) -> Measurement:
    label = bench.get("fullname", bench.get("name", "?"))
    extra = bench.get("extra_info") or {}
    for k in ("kind", "name"):
        if k not in extra:
            raise GateError(f"benchmark {label!r}: extra_info has no {k!r}; every benchmark must record kind and name")
    vs = extra.get("vs", [])
    if isinstance(vs, str) or not isinstance(vs, list):
        raise GateError(f"benchmark {label!r}: extra_info['vs'] must be a list of baseline names, got {vs!r}")
    stats = bench.get("stats") or {}
    try:
        median, lo, hi, rounds = float(stats["median"]), float(stats["min"]), float(stats["max"]), int(stats["rounds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GateError(f"benchmark {label!r}: stats lack median/min/max/rounds ({exc})") from exc
    sb = extra.get("saved_bytes")
    window = extra.get("window", 0)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise GateError(f"benchmark {label!r}: extra_info['window'] must be an int >= 0, got {window!r}")
    return Measurement(
        group=str(bench.get("group") or ""),
        kind=str(extra["kind"]),
        name=str(extra["name"]),
        vs=tuple(str(v) for v in vs),
        median=median,
        min=lo,
        max=hi,
        rounds=rounds,
        saved_bytes=None if sb is None else int(sb),
        extra=extra,
        window=window,
    )


def load_run(path: str | Path) -> list[Measurement]:
    """Read a pytest-benchmark JSON file (``--benchmark-json``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GateError(f"cannot read benchmark JSON {str(path)!r}: {exc}") from exc
    return parse_run(data)


def parse_run(data: Mapping[str, Any]) -> list[Measurement]:
    benches = data.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        raise GateError("the JSON holds no 'benchmarks' list: was it written by pytest --benchmark-json?")
    out = [_measurement(b) for b in benches]
    seen: set[tuple[str, int, str]] = set()
    for m in out:
        if (m.group, m.window, m.name) in seen:
            raise GateError(f"group {m.group!r} (window {m.window}) holds two benchmarks named {m.name!r}; names must "
                            "be unique per group and window")
        seen.add((m.group, m.window, m.name))
    return out


def _positive_table(raw: Any, table: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GateError(f"thresholds: [{table}] must be a table")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise GateError(f"thresholds: [{table}] {k!r} must be a positive finite number, got {v!r}")
        if ":" not in k or "/" not in k:
            raise GateError(f"thresholds: [{table}] key {k!r} must read 'KIND:CONTENDER/BASELINE'")
        out[k] = float(v)
    return out


def parse_thresholds(data: Mapping[str, Any]) -> Thresholds:
    gate = data.get("gate", {})
    margin = gate.get("quick_margin", 1.0) if isinstance(gate, dict) else 1.0
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 1:
        raise GateError(f"thresholds: [gate] quick_margin must be a number >= 1, got {margin!r}")
    return Thresholds(
        time=_positive_table(data.get("time"), "time"),
        memory=_positive_table(data.get("memory"), "memory"),
        quick_margin=float(margin),
        target=_positive_table(data.get("target"), "target"),
    )


def load_thresholds(path: str | Path) -> Thresholds:
    """Read a thresholds TOML file; ``GateError`` if it cannot be read or holds a bad value."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GateError(f"cannot read thresholds {str(path)!r}: {exc}") from exc
    return parse_thresholds(data)


def _verdict(ratio: float, limit: float | None) -> str:
    if limit is None:
        return "info"
    return "pass" if ratio <= limit else "FAIL"


def evaluate(
    run: Sequence[Measurement], thresholds: Thresholds, margin: float = 1.0, strict: bool = False,
    subset: bool = False,
) -> list[Row]:
    """Pair every contender with its baselines inside its group and judge each ratio.

    Raises ``GateError`` for a baseline missing from a group, an unmatched threshold (unless ``subset``: a
    deliberate partial run, e.g. one benchmark file while developing), or (``strict``) a pair without a
    threshold.
    """
    if not (margin >= 1.0 and math.isfinite(margin)):
        raise GateError(f"margin must be a finite number >= 1, got {margin!r}")
    by_group: dict[tuple[str, int], dict[str, Measurement]] = {}
    for m in run:
        by_group.setdefault((m.group, m.window), {})[m.name] = m
    rows: list[Row] = []
    used_time: set[str] = set()
    used_mem: set[str] = set()
    for m in run:
        for base_name in m.vs:
            base = by_group[m.group, m.window].get(base_name)
            if base is None:
                have = sorted(by_group[m.group, m.window])
                raise GateError(
                    f"group {m.group!r}: contender {m.name!r} names baseline {base_name!r}, which is not in this "
                    f"group of the run (present: {have}). Run the baseline in the same session, or fix 'vs'."
                )
            if base.median <= 0 or base.min <= 0:
                raise GateError(f"group {m.group!r}: baseline {base_name!r} has a non-positive time")
            key = pair_key(m.kind, m.name, base_name)
            thr = thresholds.time.get(key)
            if thr is None and strict:
                raise GateError(f"no [time] threshold for {key!r} (--strict)")
            used_time.add(key)
            limit = None if thr is None else thr * margin
            ratio = m.median / base.median
            shape = str(m.extra.get("shape", ""))
            rows.append(
                Row("time", m.group, key, m.name, base_name, ratio, m.min / base.min, m.max / base.max, thr, limit,
                    _verdict(ratio, limit), shape)
            )
            if m.saved_bytes is not None and base.saved_bytes is not None:
                if base.saved_bytes <= 0:
                    raise GateError(f"group {m.group!r}: baseline {base_name!r} records saved_bytes <= 0")
                mthr = thresholds.memory.get(key)
                used_mem.add(key)
                mratio = m.saved_bytes / base.saved_bytes
                rows.append(
                    Row("memory", m.group, key, m.name, base_name, mratio, mratio, mratio, mthr, mthr,
                        _verdict(mratio, mthr), shape)
                )
    unmatched = sorted(set(thresholds.time) - used_time) + sorted(set(thresholds.memory) - used_mem)
    if unmatched and not subset:
        raise GateError(
            "thresholds with no measurement in this run (a contender or baseline did not run, or it lost its "
            f"saved_bytes): {unmatched}"
        )
    return _over_windows(rows)


def _over_windows(rows: list[Row]) -> list[Row]:
    """One row per (metric, group, pair): the median of its per-window ratios, min..max their range."""
    buckets: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        buckets.setdefault((r.metric, r.group, r.key), []).append(r)
    out = []
    for rs in buckets.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        ratios = sorted(r.ratio for r in rs)
        med = statistics.median(ratios)
        out.append(replace(rs[0], ratio=med, ratio_min=ratios[0], ratio_max=ratios[-1],
                           verdict=_verdict(med, rs[0].limit), windows=len(rs)))
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def format_table(rows: Iterable[Row], margin: float = 1.0) -> str:
    """The rows as a plain-text table, one line per pair; time limits are shown times ``margin``."""
    rows = list(rows)
    head = ("metric", "group", "contender", "baseline", "ratio", "min..max", "threshold", "verdict")
    body = []
    for r in rows:
        thr = _fmt(r.threshold)
        if r.metric == "time" and r.threshold is not None and margin != 1.0:
            thr = f"{thr} x{margin:g}={_fmt(r.limit)}"
        spread = "" if r.metric == "memory" else f"{_fmt(r.ratio_min)}..{_fmt(r.ratio_max)}"
        body.append((r.metric, r.group, r.contender, r.baseline, _fmt(r.ratio), spread, thr, r.verdict))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target_report(rows: Iterable[Row], thresholds: Thresholds) -> list[str]:
    """One line per target key: the worst time ratio of the run against the issue's target (information only)."""
    worst: dict[str, float] = {}
    for r in rows:
        if r.metric == "time" and r.key in thresholds.target:
            worst[r.key] = max(worst.get(r.key, 0.0), r.ratio)
    out = []
    for key, tgt in thresholds.target.items():
        if key in worst:
            state = "met" if worst[key] <= tgt else "NOT MET"
            out.append(f"  {key}: worst {worst[key]:.3g} vs target {tgt:g}: {state}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rln-bench-gate`` command: 0 when every gated pair passes, 1 on a failure, 2 on bad input."""
    p = argparse.ArgumentParser(
        prog="python -m rln_verified.bench",
        description="Gate pytest-benchmark results on contender/baseline ratios from the same run.",
    )
    p.add_argument("json", help="pytest-benchmark JSON written with --benchmark-json")
    p.add_argument("--thresholds", default=str(DEFAULT_THRESHOLDS), help="TOML file (default: %(default)s)")
    p.add_argument(
        "--margin",
        default="1",
        help="factor on the time thresholds; 'quick' takes [gate] quick_margin from the TOML (default: 1)",
    )
    p.add_argument("--strict", action="store_true", help="a pair without a threshold is an error")
    p.add_argument(
        "--subset",
        action="store_true",
        help="a deliberate partial run: thresholds with no measurement are not an error (never in CI)",
    )
    p.add_argument("--rows-json", default=None, help="also write the rows as JSON to this path")
    args = p.parse_args(argv)
    try:
        thresholds = load_thresholds(args.thresholds)
        if args.margin == "quick":
            margin = thresholds.quick_margin
        else:
            try:
                margin = float(args.margin)
            except ValueError as exc:
                raise GateError(f"--margin must be a number or 'quick', got {args.margin!r}") from exc
        rows = evaluate(load_run(args.json), thresholds, margin=margin, strict=args.strict, subset=args.subset)
    except GateError as exc:
        print(f"rln-bench-gate: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows, margin))
    if args.rows_json:
        Path(args.rows_json).write_text(json.dumps([r.as_dict() for r in rows], indent=2))
    failed = [r for r in rows if r.verdict == "FAIL"]
    gated = sum(r.verdict != "info" for r in rows)
    targets = target_report(rows, thresholds)
    if targets:
        print("\nrln-bench-gate: issue targets (reported, not gated; the thresholds above are the gate):")
        print("\n".join(targets))
    if failed:
        print(f"\nrln-bench-gate: {len(failed)} of {gated} gated ratios exceed their threshold (margin {margin:g})")
        for r in failed:
            print(f"  {r.metric} {r.group}: {r.contender}/{r.baseline} = {r.ratio:.3g} > {_fmt(r.limit)}")
        return 1
    print(f"\nrln-bench-gate: all {gated} gated ratios within threshold (margin {margin:g}); {len(rows) - gated} info")
    return 0
