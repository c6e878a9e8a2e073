"""The fused R-LayerNorm kernel alone, two builds in one process: ``rnorm.c`` at a git revision against the working
tree's, each call of each build timed in turn on the same buffers (forward, then backward from its own saved stats),
one thread, the benchmarked shapes, Bayesian and plain. Prints the minimum over rounds of the mean of a batch of calls,
per build, and the largest relative difference of their outputs (the builds may round differently; they are not
compared against a reference here, which tests/test_native.py does).

    .venv/bin/python benchmarks/kernel_ab.py REV [ROUNDS]

Not part of the gate: it times the C functions through ctypes, without torch's autograd, allocation or call path, and
its figures are quoted in docs/performance.md ("The kernel alone").
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rln_verified._native import rnorm, toolchain

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "rln_verified" / "_native" / "rnorm.c"
# (groups, p, l, two_d, channels): the benchmarks' norm shapes as the kernel sees them
SHAPES = [(32 * 16, 32, 32, 1, 16), (32 * 64, 8, 8, 1, 64), (8 * 128, 56, 56, 1, 128), (32 * 128, 1, 256, 0, 1),
          (8 * 512, 1, 768, 0, 1)]


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    ref = rnorm.library()
    assert ref is not None, rnorm.reason()
    for name in ("rln_forward_f32", "rln_backward_f32"):  # the two entry points have kept their signatures
        getattr(lib, name).argtypes = getattr(ref, name).argtypes
        getattr(lib, name).restype = ctypes.c_int
    return lib


def _build_rev(rev: str, tmp: Path) -> Path:
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:rln_verified/_native/rnorm.c"], check=True,
                          capture_output=True, text=True).stdout
    src = tmp / "rnorm.c"
    src.write_text(text)
    return toolchain.build(src)


def _calls(lib: ctypes.CDLL, x: torch.Tensor, gy: torch.Tensor, gu: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
           shape: tuple[int, ...]) -> tuple[Callable[[], None], Callable[[], None], list[torch.Tensor]]:
    """The forward and backward calls of ``lib`` on fresh output buffers, and the buffers (y, u, dL/dx, dL/dw)."""
    groups, p, l_, two_d, bayes, mode, ch = shape
    y, u, st = torch.empty_like(x), torch.empty(groups), torch.empty(groups * 4, dtype=torch.float64)
    gx, gl, gw, gb = torch.empty_like(x), torch.empty(1), torch.empty_like(w), torch.empty_like(w)

    def fwd() -> None:
        lib.rln_forward_f32(x.data_ptr(), groups, p, l_, two_d, bayes, 1e-5, 0.6, 0.7, mode, w.data_ptr(),
                            b.data_ptr(), ch, y.data_ptr(), u.data_ptr(), st.data_ptr(), 1)

    def bwd() -> None:
        lib.rln_backward_f32(x.data_ptr(), gy.data_ptr(), gu.data_ptr(), groups, p, l_, two_d, bayes, 1e-5, 0.6, 1.0,
                             0.7, mode, w.data_ptr(), ch, st.data_ptr(), gx.data_ptr(), gl.data_ptr(), gw.data_ptr(),
                             gb.data_ptr(), 1)

    return fwd, bwd, [y, u, gx, gw]


def _time(fn: Any, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    rev = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        libs = {rev: _load(_build_rev(rev, Path(tmp))), "tree": _load(toolchain.build(SRC))}
    g = torch.Generator().manual_seed(0)
    for bayes in (1, 0):
        for groups, p, l_, two_d, ch in SHAPES:
            m = p * l_
            x = torch.randn(groups * m, generator=g) * 2 + 0.5
            gy = torch.randn(groups * m, generator=g)
            gu = torch.randn(groups, generator=g)
            mode, kw = (1, ch) if two_d else (2, m)
            w, b = 1 + 0.1 * torch.randn(kw, generator=g), 0.1 * torch.randn(kw, generator=g)
            outs: dict[str, list[torch.Tensor]] = {}
            best: dict[str, list[float]] = {k: [1e30, 1e30] for k in libs}
            reps = max(3, int(2e7 // x.numel()))
            for _ in range(rounds):
                for name, lib in libs.items():
                    fwd, bwd, bufs = _calls(lib, x, gy, gu, w, b, (groups, p, l_, two_d, bayes, mode, ch))
                    best[name][0] = min(best[name][0], _time(fwd, reps))
                    best[name][1] = min(best[name][1], _time(bwd, reps))
                    outs[name] = [t.clone() for t in bufs]
            a, c = outs[rev], outs["tree"]
            diff = max(float(((s - t).abs() / (s.abs() + 1e-3)).max()) for s, t in zip(a, c, strict=True))
            print(f"{'Bayesian' if bayes else 'plain   '} ({groups}, {p}, {l_}) fwd {best[rev][0]:8.1f} -> "
                  f"{best['tree'][0]:8.1f} us   bwd {best[rev][1]:8.1f} -> {best['tree'][1]:8.1f} us   "
                  f"max rel diff {diff:.1e}")


if __name__ == "__main__":
    main()
