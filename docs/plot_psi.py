"""docs/psi.png: psi(t) and psi'(t) from rln_verified.functional.psi (autograd), with the PSI-2 and PSI-4 bounds,
and the textbook form's relative error against mpmath for small t.

    python docs/plot_psi.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mpmath
import torch

from rln_verified.functional import psi
from rln_verified.seed import seed_psi

OUT = Path(__file__).resolve().parent / "psi.png"


def _ref(t: float) -> float:
    with mpmath.workdps(50):
        x = mpmath.mpf(t)
        return float(mpmath.log1p(x) - x / (1 + x))


def main() -> int:
    t = torch.logspace(-8, 8, 400, dtype=torch.float64).requires_grad_(True)
    y = psi(t)
    (g,) = torch.autograd.grad(y.sum(), t)
    tt = t.detach()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    a.loglog(tt, y.detach(), label="psi(t)")
    a.loglog(tt, tt**2 / 2, "--", label="t^2/2 (PSI-2 bound)")
    a.loglog(tt, torch.log1p(tt), ":", label="log1p(t) (PSI-2 bound)")
    a.set_xlabel("t")
    a.legend()
    b.semilogx(tt, g, label="psi'(t) (autograd)")
    b.axhline(0.25, color="k", ls="--", label="1/4 (PSI-4 bound)")
    b.set_xlabel("t")
    b.legend()
    ts = torch.logspace(-12, 2, 120, dtype=torch.float32)
    ref = torch.tensor([_ref(float(v)) for v in ts], dtype=torch.float64)
    for f, name in ((psi, "rln_verified psi"), (seed_psi, "textbook log1p(t) - t/(1+t)")):
        err = ((f(ts).double() - ref).abs() / ref).clamp_min(1e-10)
        c.loglog(ts, err, label=name)
    c.axhline(2e-6, color="k", ls="--", label="PSI-3 float32 bound 2e-6")
    c.set_xlabel("t (float32)")
    c.set_ylabel("relative error vs mpmath")
    c.legend()
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(f"wrote {OUT}: max psi' = {float(g.max()):.6f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
