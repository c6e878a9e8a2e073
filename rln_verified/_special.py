"""psi, softplus and inv_softplus (theorems PSI-* and SP-* in proofs/special.md)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from rln_verified._dispatch import jit_tracing, recording, under_func_transform
from rln_verified._validation import check_float_tensor, compute_dtype

# Below t0 the all-positive series in w = t/(2+t) is used with J terms, whose truncation is < eps/4
# there (PSI-1); above it the direct form log1p(t) - t/(1+t), whose cancellation factor c(t) <= c(t0) is
# small (PSI-3: c(0.1) < 43, c(1) < 6.2). (t0, J) per compute dtype.
PSI_SPLIT: dict[torch.dtype, tuple[float, int]] = {
    torch.float64: (0.1, 7),
    torch.float32: (1.0, 8),
}

# SP-1: above this x, exp(-x) < u * x, so x itself is the correctly rounded softplus(x).
SOFTPLUS_THRESHOLD: dict[torch.dtype, float] = {torch.float64: 37.0, torch.float32: 17.0}

_LN2 = math.log(2.0)


def _series_coeffs(j: int) -> list[float]:
    return [1.0 / (2 * k + 3) for k in range(j)]


def _psi_forward(t: torch.Tensor) -> torch.Tensor:
    """psi in t's dtype (float32 or float64); no autograd. PSI-1 (series), PSI-3 (accuracy, switch point)."""
    t0, j = PSI_SPLIT[t.dtype]
    small = t <= t0
    ts = torch.where(small, t, torch.zeros_like(t))
    # t = +inf or NaN must not reach the series; t > max is impossible for finite floats.
    tb = torch.where(small, torch.full_like(t, 2 * t0), t)
    tb = torch.nan_to_num(tb, nan=2 * t0, posinf=float(torch.finfo(t.dtype).max))
    w = ts / (2.0 + ts)
    z = w * w
    coeffs = _series_coeffs(j)
    a = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        a = torch.addcmul(torch.full_like(t, c), a, z)
    series = 2.0 * z / (1.0 + w) + 2.0 * w * z * a
    direct = torch.log1p(tb) - tb / (1.0 + tb)
    out = torch.where(small, series, direct)
    out = torch.where(t == math.inf, t, out)
    # Out of domain (t < 0) and NaN give NaN at that element only.
    return torch.where((t < 0) | torch.isnan(t), torch.full_like(t, math.nan), out)


def _dpsi(t: torch.Tensor) -> torch.Tensor:
    """psi'(t) = t/(1+t)^2, written as s/(1+t), s = t/(1+t), so (1+t)^2 never overflows (PSI-4: finite
    everywhere, t = 0 and t = inf included, in [0, 1/4], relative error <= 4 eps)."""
    tp = torch.where(t == math.inf, torch.zeros_like(t), t)
    d = (tp / (1.0 + tp)) / (1.0 + tp)
    # The exact value is <= 1/4 (PSI-4); rounding near t = 1 can land one ulp above, and clamping to the
    # exact bound only moves the result towards the true value.
    d = torch.clamp(d, max=0.25)
    return torch.where(t == math.inf, torch.zeros_like(t), d)


def psi_and_dpsi(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(psi(t), psi'(t))`` without autograd, for per-group statistics inside the layers.

    ``t`` must be float32 or float64 (callers upcast lower precision first).
    """
    return _psi_forward(t), _dpsi(t)


def psi_plain(t: torch.Tensor) -> torch.Tensor:
    """psi in plain torch operations (the forms of :func:`psi`, PSI-1/PSI-3): no custom autograd node, so every torch
    transform differentiates it to any order. Its autograd derivative differs from PSI-4's ``t/(1+t)^2`` by rounding
    only: the series branch has no cancellation, and the direct branch runs where ``t > t0``, whose cancellation
    factor is bounded (PSI-3). ``t`` float32 or float64."""
    return _psi_forward(t)


class _Psi(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(t: torch.Tensor) -> torch.Tensor:
        return _psi_forward(t)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        (t,) = inputs
        ctx.save_for_backward(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (t,) = ctx.saved_tensors
        return grad * _dpsi(t)  # plain torch operations: differentiable again (PSI-4)


def psi(t: torch.Tensor) -> torch.Tensor:
    r"""The noise-inflation function :math:`\psi(t) = \log(1+t) - t/(1+t)` for :math:`t \ge 0`.

    .. math::
        \psi(t) = \frac{2w^2}{1+w} + 2w^3 \sum_{j\ge 0} \frac{w^{2j}}{2j+3},\qquad w = \frac{t}{2+t}

    is used for small ``t`` (every term positive, no cancellation) and the direct form above a
    per-dtype switch point (PSI-1, PSI-3). Relative error <= 1e-13 in float64 on [1e-300, 1e300] and
    <= 2e-6 in float32 on [1e-30, 1e30] wherever psi(t) is a normal float, 0 or subnormal (never negative)
    below (PSI-3); psi(0) = 0, psi >= 0, increasing, <= t^2/2 and <= log1p(t) (PSI-2); the gradient is
    ``t/(1+t)^2``, in [0, 1/4] and finite everywhere including ``t = 0`` and ``t = inf`` (PSI-4).
    ``t < 0`` gives NaN at that element. float16 and bfloat16 are computed in float32 and cast back.

    Args:
        t: floating-point tensor, any device.

    Raises:
        TypeError: ``t`` is not a floating-point tensor.
    """
    check_float_tensor(t, "psi: t")
    cd = compute_dtype(t.dtype)
    # torch.func (jacfwd, hessian) and torch.jit.trace (a saved trace holds no Python autograd.Function): the plain
    # forms, differentiated by autograd
    if jit_tracing() or (not recording() and under_func_transform(t)):
        return psi_plain(t.to(cd)).to(t.dtype)
    out: torch.Tensor = _Psi.apply(t.to(cd))  # type: ignore[no-untyped-call]
    return out.to(t.dtype)


def softplus(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 + e^x)`, finite for every finite ``x`` and equal to ``x`` once ``x`` is large (SP-1).

    Above a per-dtype threshold ``T`` with ``exp(-T) < u*T`` the answer is ``x`` itself, correctly rounded;
    below it ``log1p(exp(x))`` cannot overflow. Relative error <= ``2 eps + u`` where the result is a normal
    float (SP-1). The gradient is ``sigmoid(x)``. float16 and bfloat16 are computed in float32.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
    """
    check_float_tensor(x, "softplus: x")
    cd = compute_dtype(x.dtype)
    xc = x.to(cd)
    return F.softplus(xc, beta=1.0, threshold=SOFTPLUS_THRESHOLD[cd]).to(x.dtype)


def _log1mexp(y: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-y)) for y > 0, accurate on both sides of ln 2 (Maechler's split)."""
    near = y <= _LN2
    yn = torch.where(near, y, torch.ones_like(y))
    yf = torch.where(near, torch.ones_like(y), y)
    return torch.where(near, torch.log(-torch.expm1(-yn)), torch.log1p(-torch.exp(-yf)))


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    r"""The inverse of :func:`softplus`: :math:`x = y + \log(1 - e^{-y})` for :math:`y > 0`.

    No overflow for large ``y`` and no loss for tiny ``y`` (SP-2, SP-3). In float64/float32, for every
    positive normal ``y`` the result is within ``Delta = (1 + u) eps (|ln(1 - e^-y)| + 1.02) + u |x|`` of the
    exact ``x``, and ``softplus(inv_softplus(y))`` returns ``y`` within ``~ eps (1.5 |ln y| + 3.5)``
    relative (about ``3 eps`` for large ``y``): the conditioning of the problem, since the rounding of
    ``x ~ ln y`` is amplified by ``exp``. float16 and bfloat16 store ``x`` with ``u_d |x|`` absolute error,
    so there the round trip is only within about ``expm1(u_d |ln y|)`` (bfloat16: 0.31 at ``y = 2.3e-30``,
    0.42 at the smallest normal). SP-2 states the exact bounds.

    ``y = 0`` gives ``-inf``, ``y < 0`` gives NaN, ``y = inf`` gives ``inf``. float16 and bfloat16 are
    computed in float32 and rounded once.

    Raises:
        TypeError: ``y`` is not a floating-point tensor.
    """
    check_float_tensor(y, "inv_softplus: y")
    cd = compute_dtype(y.dtype)
    yc = y.to(cd)
    pos = yc > 0
    ys = torch.where(pos, yc, torch.ones_like(yc))
    ys = torch.where(ys == math.inf, torch.ones_like(ys), ys)
    x = ys + _log1mexp(ys)
    x = torch.where(yc == math.inf, yc, x)
    x = torch.where(yc == 0, torch.full_like(yc, -math.inf), x)
    x = torch.where((yc < 0) | torch.isnan(yc), torch.full_like(yc, math.nan), x)
    return x.to(y.dtype)


__all__ = ["PSI_SPLIT", "SOFTPLUS_THRESHOLD", "inv_softplus", "psi", "psi_and_dpsi", "psi_plain", "softplus"]
