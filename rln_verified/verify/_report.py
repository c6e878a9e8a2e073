"""Reports of a verification run: the terminal table, JSON (stable schema) and Markdown.

JSON schema, version 1 (keys are only ever added, never renamed)::

    {"schema": 1, "profile": str, "seed": int | null, "torch": str, "hypothesis": str, "devices": [str],
     "results": [{"claim": str, "subject": str, "device": str, "dtype": str, "metric": str,
                  "examples_tried": int, "worst_margin": float | null, "verdict": "holds" |
                  "holds (reference self-check)" | "VIOLATED" |
                  "ERROR" | "skipped", "counterexample": str | null, "reason": str | null}]}

A check that calls no kernel (``Check.calls_kernel`` False: PSI-1's series remainder and RELU-1's identities,
both checked in mpmath alone) is a reference self-check: when it passes, its verdict says so, and it is not
counted among the kernels that hold. ``worst_margin`` is null when it is infinite (JSON has no infinity) and
when the claim was skipped. The schema is documented for users in docs/cli.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import torch

from rln_verified.verify._core import CheckResult, Status

SCHEMA_VERSION = 1


def verdict(r: CheckResult) -> str:
    """The report's word for ``r.status``."""
    return r.status.value


#: The verdict of a passing check that calls no kernel.
SELF_CHECK = Status.SELF_CHECK.value


@dataclass(frozen=True)
class RunInfo:
    profile: str
    seed: int | None
    devices: tuple[str, ...]


def _row(r: CheckResult) -> dict[str, Any]:
    v = verdict(r)
    m = r.worst_margin
    return {
        "claim": r.check.claim, "subject": r.check.subject, "device": r.device,
        "dtype": str(r.dtype).removeprefix("torch."), "metric": r.check.metric,
        "examples_tried": r.examples_tried, "worst_margin": m if math.isfinite(m) and v != "skipped" else None,
        "verdict": v,
        "counterexample": r.example_decorator() if r.counterexample is not None and v != "skipped" else None,
        "reason": r.skip_reason if r.skip_reason is not None else r.error,
    }


def to_json(results: list[CheckResult], info: RunInfo) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "profile": info.profile, "seed": info.seed, "torch": torch.__version__,
            "hypothesis": hypothesis.__version__, "devices": list(info.devices),
            "results": [_row(r) for r in results]}


def write_json(path: Path, results: list[CheckResult], info: RunInfo) -> None:
    path.write_text(json.dumps(to_json(results, info), indent=2) + "\n")


def _fmt_margin(m: float | None) -> str:
    return "inf" if m is None else f"{m:.3g}"


_HEAD = ("claim", "subject", "device", "dtype", "examples", "worst margin", "verdict")


def _cells(d: dict[str, Any]) -> tuple[str, str, str, str, str, str, str]:
    skip = d["verdict"] == "skipped"
    return (d["claim"], d["subject"], d["device"], d["dtype"], "-" if skip else str(d["examples_tried"]),
            "-" if skip else _fmt_margin(d["worst_margin"]), d["verdict"])


def table(results: list[CheckResult]) -> str:
    rows = [_cells(d) for d in map(_row, results)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(_HEAD)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(_HEAD, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def findings(results: list[CheckResult]) -> str:
    out = []
    for r in results:
        d = _row(r)
        if d["verdict"] in ("VIOLATED", "ERROR"):
            out.append(f"{d['claim']}/{d['subject']} [{d['device']}, {d['dtype']}] {d['verdict']}: "
                       f"worst margin {_fmt_margin(d['worst_margin'])} ({d['metric']})")
            if d["reason"]:
                out.append(f"    {d['reason']}")
            if d["counterexample"]:
                out.append(f"    {d['counterexample']}")
    return "\n".join(out)


def tally(results: list[CheckResult]) -> str:
    """The verdict counts: kernels that hold, reference self-checks that hold (no kernel called), violations, errors
    and skips (not applicable here; never counted as holding)."""
    v = [verdict(r) for r in results]
    return (f"{v.count('holds')} hold, {v.count(SELF_CHECK)} reference self-checks hold (no kernel called), "
            f"{v.count('VIOLATED')} violated, {v.count('ERROR')} errors, {v.count('skipped')} skipped")


def markdown(results: list[CheckResult], info: RunInfo, title: str = "Verification report") -> str:
    seed = f"`{info.seed}`" if info.seed is not None else "none (the profile is derandomized)"
    lines = [f"# {title}", "", f"- profile: `{info.profile}`", f"- seed: {seed}",
             f"- torch: `{torch.__version__}`, hypothesis: `{hypothesis.__version__}`",
             f"- devices: {', '.join(f'`{d}`' for d in info.devices)}",
             f"- verdicts: {tally(results)}", "",
             "| claim | subject | device | dtype | examples | worst margin | verdict |",
             "|---|---|---|---|---|---|---|"]
    for d in map(_row, results):
        lines.append("| " + " | ".join(_cells(d)) + " |")
    swept = [r for r in results if "sweep" in r.extra and verdict(r) != "skipped"]
    if swept:
        lines += ["", "## Sweeps", ""]
        lines += [f"- **{r.check.claim} / {r.check.subject}** ({r.device}, {str(r.dtype).removeprefix('torch.')}): "
                  f"{r.extra['sweep']}" for r in swept]
    bad = [d for d in map(_row, results) if d["verdict"] not in ("holds", SELF_CHECK)]
    if bad:
        lines += ["", "## Findings and skips", ""]
        for d in bad:
            lines.append(f"- **{d['claim']} / {d['subject']}** ({d['device']}, {d['dtype']}): {d['verdict']}"
                         + (f"; {d['reason']}" if d["reason"] else ""))
            if d["counterexample"]:
                lines += ["", "  ```python", f"  {d['counterexample']}", "  ```", ""]
    return "\n".join(lines) + "\n"


__all__ = ["SCHEMA_VERSION", "SELF_CHECK", "RunInfo", "findings", "markdown", "table", "tally", "to_json",
           "verdict", "write_json"]
