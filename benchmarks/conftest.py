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


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread by default. On a shared 2-core machine an OpenMP parallel region waits for its
    # slowest thread, and one descheduled thread turns a 0.4 ms GroupNorm into 40 ms (measured), which is
    # noise in the baseline, not work. Single-threaded ratios measure the work. Override with
    # RLN_BENCH_THREADS=N; the count is recorded in every benchmark's extra_info.
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))


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
LINEAR_MODULES = ("rln_verified._bayes_linear", "rln_verified")


def record(
    benchmark: Any, kind: str, name: str, vs: list[str], shape: object, dtype: torch.dtype = torch.float32,
    device: str = "cpu", **extra: object,
) -> None:
    benchmark.extra_info.update(
        kind=kind,
        name=name,
        vs=vs,
        shape=str(shape),
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        **extra,
    )
