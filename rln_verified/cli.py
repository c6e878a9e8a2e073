"""``rln-verify``: run the stability suite (every registered check) or audit a user's layer.

    rln-verify [--profile dev|ci|thorough] [--seed N] [--device D] [--dtype T] [--claims PATTERN]
               [--json PATH] [--markdown PATH]
    rln-verify audit MODULE:FACTORY --shape 8,64 [--kwargs name=value ...] [--groups last:K|channels|groups:G]
               [--gradient-constant K] [--no-centring] [same options]

Verdicts: "holds" (a kernel was called and the claim held on every case), "holds (reference self-check)" (the claim
was checked in mpmath alone, no kernel called: counted apart), "skipped" (not applicable here, e.g. the fused kernel is
unavailable or the device is not its; never counted as holding), "VIOLATED", "ERROR". The ``thorough`` profile also
runs each check's sweep exhaustively (EXP-1: every float32 of the std's range).

Exit status: 0 when no claim is violated (skips included), 1 on a violation (the shrunk counterexample is printed as a
ready-to-paste ``@example``), 2 on bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

import hypothesis
import torch

from rln_verified.verify._audit import UsageError, audit_subject, parse_kwargs, parse_shape
from rln_verified.verify._core import Check, CheckResult, one_line, registered_checks, run_check
from rln_verified.verify._profiles import PROFILES, run_settings
from rln_verified.verify._report import RunInfo, findings, markdown, table, tally, verdict, write_json

_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
}
# The profile of the test suite when HYPOTHESIS_PROFILE names one (as under `make`), else dev.
_ENV_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")
DEFAULT_PROFILE = _ENV_PROFILE if _ENV_PROFILE in PROFILES else "dev"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                   help=f"Hypothesis profile, as in the test suite (default {DEFAULT_PROFILE}, from "
                        "HYPOTHESIS_PROFILE when set)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the search (default: a fresh one, printed; none under a derandomized profile)")
    p.add_argument("--device", action="append", default=None,
                   help="device to run on (repeatable; default cpu, plus cuda when available)")
    p.add_argument("--dtype", action="append", default=None, choices=tuple(_DTYPES),
                   help="dtype to run (repeatable; default every dtype each claim is stated for)")
    p.add_argument("--claims", default="*", metavar="PATTERN",
                   help="glob on claim IDs (N3, PSI-*) or on claim/subject keys (N3/RLayerNorm)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the JSON report here")
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="write the Markdown report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def _devices(names: Sequence[str] | None) -> tuple[torch.device, ...]:
    if not names:
        return (torch.device("cpu"),) + ((torch.device("cuda"),) if torch.cuda.is_available() else ())
    out = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda"):
            raise UsageError(f"device {name!r} is not supported: use cpu or cuda")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {name!r} is not available: torch {torch.__version__} sees no CUDA device")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
        out.append(dev)
    return tuple(dict.fromkeys(out))


def _select(checks: Sequence[Check], pattern: str) -> list[Check]:
    """The checks whose claim ID or claim/subject key matches the glob, ignoring case (``psi-*`` is ``PSI-*``)."""
    pat = pattern.upper()
    chosen = [c for c in checks if fnmatch.fnmatchcase(c.claim.upper(), pat) or fnmatch.fnmatchcase(c.key.upper(), pat)]
    if not chosen:
        raise UsageError(f"--claims {pattern!r} matches no claim; known claims: "
                         + ", ".join(sorted({c.claim for c in checks})))
    return chosen


class _Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise (logs, CI)."""

    WIDTH = 24

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and stream.isatty()
        self.t0 = time.monotonic()
        self._last = 0

    def _bar(self, done: int) -> str:
        full = self.WIDTH * done // max(self.total, 1)
        return "[" + "#" * full + "." * (self.WIDTH - full) + f"] {done:>{len(str(self.total))}}/{self.total}"

    def _write(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(self._last))
            self._last = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self, done: int, label: str) -> None:
        if self.enabled:
            self._write(f"{self._bar(done)} {time.monotonic() - self.t0:6.1f}s  {label}")

    def finish(self) -> None:
        if self.enabled:
            self._write(f"{self._bar(self.total)} {time.monotonic() - self.t0:6.1f}s  done")
            if self.tty:
                self.stream.write("\n")


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _writable(path: Path | None, option: str) -> None:
    """A report path must be writable before any check runs: a bad path is a usage error (exit 2), found in a
    second, not after the whole run."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a directory; give a file path")
    if not parent.is_dir():
        raise UsageError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {str(path)!r} is not writable")


def _write_reports(args: argparse.Namespace, results: list[CheckResult], info: RunInfo, title: str) -> None:
    try:
        if args.json is not None:
            write_json(args.json, results, info)
        if args.markdown is not None:
            args.markdown.write_text(markdown(results, info, title))
    except OSError as exc:
        raise UsageError(f"could not write the report: {exc}") from None


def _run(checks: Sequence[Check], args: argparse.Namespace, title: str) -> int:
    _writable(args.json, "--json")
    _writable(args.markdown, "--markdown")
    devices = _devices(args.device)
    wanted = tuple(_DTYPES[d] for d in args.dtype) if args.dtype else None
    jobs = [(c, dev, dt) for c in checks for dev in devices for dt in c.dtypes if wanted is None or dt in wanted]
    if not jobs:
        raise UsageError("no selected claim is stated for the requested dtype(s)")
    cfg, seed = run_settings(args.profile, args.seed)
    results: list[CheckResult] = []
    progress = _Progress(len(jobs), sys.stderr, not args.quiet)
    t0 = time.monotonic()
    for i, (c, dev, dt) in enumerate(jobs):
        progress.step(i, f"{c.key} {dev} {_dt(dt)}")
        results.append(run_check(c, dev, dt, settings_=cfg, seed_=seed, exhaustive=args.profile == "thorough"))
    progress.finish()
    info = RunInfo(profile=args.profile, seed=seed, devices=tuple(str(d) for d in devices))
    verdicts = [verdict(r) for r in results]
    n_bad, n_err = verdicts.count("VIOLATED"), verdicts.count("ERROR")
    print(table(results))
    print(f"\n{tally(results)} ({time.monotonic() - t0:.1f}s; profile {args.profile}, seed {seed}, "
          f"torch {torch.__version__}, hypothesis {hypothesis.__version__})")
    skipped = [f"{r.check.key} [{r.device}, {_dt(r.dtype)}]: {r.skip_reason}"
               for r, v in zip(results, verdicts, strict=True) if v == "skipped"]
    if skipped:
        print("\nSkipped (not checked here, so not counted as holding):\n  " + "\n  ".join(skipped))
    swept = [f"{r.check.key} [{r.device}, {_dt(r.dtype)}]: {r.extra['sweep']}" for r, v in
             zip(results, verdicts, strict=True) if "sweep" in r.extra and v != "skipped"]
    if swept:
        print("\nSweeps (run once, before the search):\n  " + "\n  ".join(swept))
    bad = findings(results)
    if bad:
        print("\nCounterexamples (shrunk by Hypothesis; pinned examples are reported as given):\n" + bad)
    _write_reports(args, results, info, title)
    return 1 if n_bad or n_err else 0


def _main_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rln-verify", description="Run the stability suite. `rln-verify audit -h` audits a layer.")
    _common(p)
    return p


def _audit_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rln-verify audit", description="Run the generic normalization-layer checks on a layer.")
    p.add_argument("factory", metavar="MODULE:FACTORY", help="importable callable that builds the layer")
    p.add_argument("--shape", required=True, help="input shape, batch first, e.g. 8,64")
    p.add_argument("--kwargs", nargs="*", default=[], metavar="NAME=VALUE", help="factory arguments")
    p.add_argument("--groups", default=None, help="last:K, channels or groups:G (default: inferred)")
    p.add_argument("--gradient-constant", type=float, default=None, metavar="K",
                   help="the layer's gradient constant K of N3 (known for torch's and our layers)")
    p.add_argument("--no-centring", action="store_true",
                   help="the layer does not subtract the mean (RMSNorm-like): N4 and N10 do not apply")
    _common(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_in[:1] == ["audit"]:
            from rln_verified.verify.norm import GENERIC_CLAIMS, make_checks

            args = _audit_parser().parse_args(args_in[1:])
            subject = audit_subject(args.factory, parse_shape(args.shape), parse_kwargs(args.kwargs), args.groups,
                                    gradient_constant=args.gradient_constant,
                                    centred=False if args.no_centring else None)
            checks = _select(make_checks(subject, GENERIC_CLAIMS), args.claims)
            return _run(checks, args, f"Audit of {args.factory}")
        args = _main_parser().parse_args(args_in)
        return _run(_select(registered_checks(), args.claims), args, "Verification report")
    except UsageError as exc:
        print(f"rln-verify: error: {one_line(str(exc), 500)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rln-verify: interrupted", file=sys.stderr)
        return 130


__all__ = ["main"]
