"""pytest-benchmark set-up for the ratio gate.

Every benchmark records ``kind``, ``name``, ``vs`` (its baselines), ``shape``, ``dtype``, ``device`` and the
thread count in ``extra_info`` through ``record``; ``python -m rln_verified.bench`` pairs them by group.
Run with ``make bench`` (full) or ``make bench-quick``; see benchmarks/README.md.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
import torch

THREADS_ENV = "RLN_BENCH_THREADS"
WINDOWS_ENV = "RLN_BENCH_WINDOWS"
_current = {"window": 0}


def _windows() -> int:
    raw = os.environ.get(WINDOWS_ENV, "3")
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"{WINDOWS_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every benchmark runs once per window; the windows are passes over the whole suite (see the reordering
    # below), so each contender/baseline pair is measured in several time windows spread over the run and the
    # gate takes the median of the per-window ratios (rln_verified/bench/_gate.py).
    if "window" in metafunc.fixturenames:
        metafunc.parametrize("window", range(_windows()), indirect=True, ids=lambda w: f"w{w}")


def _window_of(item: pytest.Item) -> int:
    spec = getattr(item, "callspec", None)
    return int(spec.params.get("window", 0)) if spec is not None else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Seed references run in window 0 only; then a stable sort by window: window 0 of every benchmark, in file
    # order, then window 1, and so on.
    drop = [it for it in items if _window_of(it) > 0 and it.get_closest_marker("reference") is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
        keep = set(map(id, drop))
        items[:] = [it for it in items if id(it) not in keep]
    items.sort(key=_window_of)


# The seed forms are references timed for the record (info rows, never gated) and run 30 - 110x slower than
# the contenders: they run in window 0 only, and a few rounds place them well enough.
REFERENCE = [pytest.mark.benchmark(min_rounds=3, max_time=0.1), pytest.mark.reference]


def is_reference(name: str) -> bool:
    """The seed forms (``rln_verified.seed``) are named ``Seed...``."""
    return name.startswith("Seed")


def names(names: list[str]) -> list[Any]:
    """Parametrize values for a ``name`` argument, the seed references marked ``REFERENCE``."""
    return [pytest.param(n, marks=REFERENCE) if is_reference(n) else n for n in names]


@pytest.fixture(autouse=True)
def window(request: pytest.FixtureRequest) -> int:
    """The current window (0 when not parametrized); ``record`` stores it in extra_info."""
    w = int(getattr(request, "param", 0))
    _current["window"] = w
    return w


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread by default. On a shared 2-core machine an OpenMP parallel region waits for its
    # slowest thread, and one descheduled thread turns a 0.4 ms GroupNorm into 40 ms (measured), which is
    # noise in the baseline, not work. Single-threaded ratios measure the work. Override with
    # RLN_BENCH_THREADS=N; the count is recorded in every benchmark's extra_info.
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
    config.addinivalue_line("markers", "reference: a seed reference, timed in window 0 only")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"rln_verified benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, cpu float32"]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def require(attr: str, *modules: str) -> Any:
    """``attr`` from the first of ``modules`` that has it; skip with a clear message while none does.

    A skipped contender leaves its threshold unmatched, and the gate fails on an unmatched threshold, so a
    missing layer can never pass the gate silently.
    """
    for mod in modules:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, attr):
            return getattr(m, attr)
    pytest.skip(f"contender {attr} not found in {', '.join(modules)} (not implemented yet)")


NORM_MODULES = ("rln_verified",)
LINEAR_MODULES = ("rln_verified._bayesian_linear", "rln_verified._bayesian_mlp", "rln_verified")


def record(
    benchmark: Any, kind: str, name: str, vs: list[str], shape: object, dtype: torch.dtype = torch.float32,
    device: str = "cpu", **extra: object,
) -> None:
    if _current["window"] > 0:
        vs = [v for v in vs if not is_reference(v)]  # the references ran in window 0 only
    benchmark.extra_info.update(
        kind=kind,
        name=name,
        vs=vs,
        shape=str(shape),
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        window=_current["window"],
        **extra,
    )
