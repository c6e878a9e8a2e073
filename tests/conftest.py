"""Shared test set-up: Hypothesis profiles, the device axis, and the claims summary.

Profiles (pick with HYPOTHESIS_PROFILE; under CI the default is ``ci``):
  dev       quick local runs
  ci        extends Hypothesis' built-in ``ci`` profile (no database), seeded from the commit by ``make test``
  thorough  10x the examples of ``ci`` (``make verify-thorough``)
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import pytest
import torch
from hypothesis import settings

from rln_verified.verify._profiles import register_profiles

# The profiles are rln_verified.verify's (one registration for pytest and rln-verify).
register_profiles()
_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


def _devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


DEVICES = _devices()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--verify-summary",
        action="store_true",
        default=False,
        help="print a per-claim table (pass/fail per theorem ID) at the end of the run",
    )


def pytest_configure(config: pytest.Config) -> None:
    # RLN_VERIFIED_REQUIRE_NATIVE=1 with RLN_VERIFIED_NATIVE=0 would skip every kernel test: refuse the session.
    from rln_verified._native.toolchain import settings_problem

    problem = settings_problem()
    if problem is not None:
        raise pytest.UsageError(problem)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that takes a ``device`` argument runs on each available device.
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


def _seed_line(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", default=None)
    if seed is None:
        return "none given (derandomized profiles repeat their cases; others draw afresh)"
    return f"{seed} (replay: make pytest HYPOTHESIS_SEED={seed})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    cuda = "cuda available" if torch.cuda.is_available() else "cuda NOT available: CUDA cases not generated"
    return [
        f"rln_verified: torch {torch.__version__}; devices covered: {', '.join(DEVICES)} ({cuda})",
        f"rln_verified: hypothesis profile {settings.get_current_profile_name()}, seed {_seed_line(config)}",
    ]


_claim_outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    ids: tuple[str, ...] = getattr(report, "claim_ids", ())
    for cid in ids:
        _claim_outcomes[cid][report.outcome] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    ids: list[str] = []
    for mark in item.iter_markers(name="claim"):
        ids.extend(str(a) for a in mark.args)
    # A test parametrized over claims counts each case only for its own claim.
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "claim" in callspec.params:
        ids = [cid for cid in ids if cid == callspec.params["claim"]]
    report.claim_ids = tuple(ids)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tr = terminalreporter
    tr.write_sep("=", "rln_verified coverage")
    tr.write_line(f"devices covered: {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        tr.write_line("cuda: not available on this machine, so no CUDA cases ran (not a silent skip)")
    tr.write_line(f"hypothesis profile: {settings.get_current_profile_name()}, seed {_seed_line(config)}")
    if config.getoption("--verify-summary"):
        from rln_verified.claims import CLAIMS

        tr.write_sep("-", "claims")
        tr.write_line(f"{'claim':<10} {'topic':<16} {'passed':>6} {'failed':>6} {'skipped':>7}  verdict")
        for c in CLAIMS:
            o = _claim_outcomes.get(c.id, {})
            p, f, s = o.get("passed", 0), o.get("failed", 0), o.get("skipped", 0)
            # A skipped test did not check its claim: all skipped is "skipped", some skipped is never plain "holds".
            verdict = "VIOLATED" if f else ("skipped" if s and not p else ("holds, some skipped" if s else
                                                                             ("holds" if p else "not run")))
            tr.write_line(f"{c.id:<10} {c.topic:<16} {p:>6} {f:>6} {s:>7}  {verdict}")
