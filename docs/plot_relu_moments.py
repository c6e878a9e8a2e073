"""docs/relu_moments.png: relative error of rln_verified.functional.relu_moments against mpmath, across
a = mu/sigma from -1e3 to 1e3, in float64 and float32, next to the textbook closed form in float64.

    python docs/plot_relu_moments.py

The reference is the one RELU-4's check uses (rln_verified.verify.gaussian.relu_moments_ref, Phi/phi closed
forms at 90 digits). Points where the true value is below the dtype's smallest normal are left out, as in
RELU-4; sigma = 1, so mu = a.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mpmath
import torch

from rln_verified.functional import relu_moments
from rln_verified.verify.gaussian import relu_moments_ref

OUT = Path(__file__).resolve().parent / "relu_moments.png"
FLOOR = 1e-18  # errors below this (exact results) are drawn at the floor


def _textbook(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E = mu Phi(a) + sigma phi(a), Var = sigma^2 [(a^2+1) Phi(a) + a phi(a)] - E^2, as written."""
    a = mu / sigma
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    mean = mu * cdf + sigma * pdf
    return mean, sigma * sigma * ((a * a + 1) * cdf + a * pdf) - mean * mean


def _rel(got: torch.Tensor, ref: list[mpmath.mpf], dtype: torch.dtype) -> list[float]:
    """|got - ref| / |ref| per point; NaN where the reference is below the dtype's smallest normal."""
    tiny = float(torch.finfo(dtype).tiny)
    out = []
    for g, r in zip(got.double().tolist(), ref, strict=True):
        if abs(r) < tiny:
            out.append(math.nan)
        else:
            err = float(abs((mpmath.mpf(g) - r) / r)) if math.isfinite(g) else 1.0
            out.append(min(max(err, FLOOR), 1.0))
    return out


def main() -> int:
    pos = torch.logspace(-3, 3, 121, dtype=torch.float64)
    a = torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])
    sigma = torch.ones_like(a)
    a32 = a.float()
    # Each dtype is compared at its own (rounded) inputs, so the error is the kernel's, not the input's.
    refs = {dt: [relu_moments_ref(float(v), 1.0) for v in x] for dt, x in ((torch.float64, a), (torch.float32, a32))}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    curves = [
        ("relu_moments float64", torch.float64, relu_moments(a, sigma), "-"),
        ("relu_moments float32", torch.float32, relu_moments(a32, sigma.float()), "-"),
        ("textbook closed form float64", torch.float64, _textbook(a, sigma), ":"),
    ]
    worst: dict[str, float] = {}
    for label, dtype, (mean, var), style in curves:
        ref = refs[dtype]
        for ax, got, i, name in ((axes[0], mean, 0, "mean"), (axes[1], var, 1, "variance")):
            err = _rel(got, [r[i] for r in ref], dtype)
            ax.plot(a.tolist(), err, style, lw=1.2, label=label)
            finite = [e for e in err if not math.isnan(e)]
            worst[f"{label} {name}"] = max(finite) if finite else math.nan
    for ax, name in ((axes[0], "mean"), (axes[1], "variance")):
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 2, 2.0)
        ax.axhline(1e-12, color="k", ls="--", lw=0.8, label="RELU-4 bound, float64 (1e-12)")
        ax.axhline(1e-5, color="grey", ls="--", lw=0.8, label="RELU-4 bound, float32 (1e-5)")
        ax.set_xlabel("a = mu / sigma")
        ax.set_title(f"relu(N(mu, sigma^2)): {name}")
    axes[0].set_ylabel("relative error vs mpmath")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.04), ncol=5, fontsize=8, frameon=False)
    fig.text(0.5, 0.005, "errors of exact results are drawn at 1e-18; points where the true value is below the "
             "dtype's smallest normal are left out (RELU-4 is stated for normal results)", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(OUT, dpi=90)
    for k, v in worst.items():
        print(f"{k}: worst relative error {v:.3g}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
