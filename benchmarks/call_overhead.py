"""The fused norm layers' call overhead: one training step (forward, backward) with both C kernel calls replaced by
no-ops, against nn.GroupNorm's whole step on a tiny input (nearly all call overhead). One thread; median of 7 x N.

    MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000 \\
        .venv/bin/python benchmarks/call_overhead.py [N]

Not part of the gate: it times one process on purpose, and its figures are quoted in docs/performance.md.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import rln_verified as rv
from rln_verified._native import rnorm


class _NoKernel:
    """Stands in for the loaded C library: both entry points return success without touching the buffers."""

    def rln_forward_f32(self, *args: Any) -> int:
        return 0

    def rln_backward_f32(self, *args: Any) -> int:
        return 0


def _step_us(layer: nn.Module, x: torch.Tensor, g: torch.Tensor, n: int) -> float:
    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(g)

    return _median_us(step, n)


def _median_us(fn: Callable[[], None], n: int) -> float:
    for _ in range(50):
        fn()
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    torch.set_num_threads(1)
    gc.disable()
    if not rnorm.available():
        raise SystemExit(f"the fused kernel is not in use: {rnorm.reason()}")
    tiny = torch.randn(2, 4, 8, 8, requires_grad=True)
    gn = _step_us(nn.GroupNorm(4, 4), tiny, torch.randn_like(tiny), n)
    print(f"GroupNorm(4, 4) step on (2, 4, 8, 8): {gn:.1f} us")
    rnorm.library = lambda: _NoKernel()  # type: ignore[assignment]
    for shape in [(32, 16, 32, 32), (32, 64, 8, 8)]:
        x = torch.randn(*shape, requires_grad=True)
        t = _step_us(rv.BayesianRLayerNorm2d(shape[1]), x, torch.randn(*shape), n)
        print(f"BayesianRLayerNorm2d step on {shape}, kernel calls as no-ops: {t:.1f} us")


if __name__ == "__main__":
    main()
