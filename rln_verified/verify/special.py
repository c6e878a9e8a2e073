"""Checks of PSI-* and SP-* (proofs/special.md) against mpmath references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import mpmath
import torch
from hypothesis import strategies as st

from rln_verified._special import PSI_SPLIT, inv_softplus, psi, softplus
from rln_verified._validation import compute_dtype
from rln_verified.verify._core import (
    ALL_DTYPES,
    DEFAULT_DTYPES,
    Check,
    eps,
    log_uniform,
    register,
    round_to,
    smallest_normal,
)
from rln_verified.verify._margins import fold, guarded, has_nan, ratio
from rln_verified.verify._margins import rel_err as rel_err

# ---- references ---------------------------------------------------------------------------------


def psi_ref(t: float) -> mpmath.mpf:
    """psi(t) at 50 significant digits. log1p(t) - t/(1+t) cancels ~2|log10 t| digits for small t, so
    the working precision grows with it."""
    extra = int(2 * abs(math.log10(t))) + 10 if t > 0 else 10
    with mpmath.workdps(50 + extra):
        tt = mpmath.mpf(t)
        return +(mpmath.log1p(tt) - tt / (1 + tt))


def dpsi_ref(t: float) -> mpmath.mpf:
    with mpmath.workdps(60):
        tt = mpmath.mpf(t)
        return +(tt / (1 + tt) ** 2)


def softplus_ref(x: float) -> mpmath.mpf:
    with mpmath.workdps(60):
        return +mpmath.log1p(mpmath.exp(mpmath.mpf(x)))


def _scalar(v: float, device: torch.device, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    return torch.tensor([v], dtype=dtype, device=device, requires_grad=grad)


def _max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


# ---- PSI-1: the all-positive series and its truncation bound --------------------------------------

# PSI-1's remainder bound is proved for w = t/(2+t) <= (sqrt 5 - 1)/2, where w (1 + w) <= 1: t <= 1 + sqrt 5.
_PSI1_T_MAX = 1.0 + math.sqrt(5.0)


def psi_series_remainder(t: float, j: int) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(R_J/psi(t), bound) for the J-term series of PSI-1, bound = w^(2J)/((2J+3)(1-w^2)), w = t/(2+t).

    The remainder is psi(t) minus the partial sum, so it is known to the working precision times psi's
    condition: psi cancels ~2|log10 t| digits for small t (as in psi_ref), and R_J/psi ~ w^(2J) needs
    2J|log10 w| more. 40 digits are kept beyond both, so the ratio is exact to ~1e-40.
    """
    w_approx = t / (2.0 + t)
    dps = 40 + int(2 * j * -math.log10(w_approx)) + int(2 * max(0.0, -math.log10(t))) + 10
    with mpmath.workdps(dps):
        tt = mpmath.mpf(t)
        w = tt / (2 + tt)
        z = w * w
        partial = 2 * z / (1 + w) + 2 * w * z * mpmath.fsum(z**k / (2 * k + 3) for k in range(j))
        exact = mpmath.log1p(tt) - tt / (1 + tt)
        return +((exact - partial) / exact), +(z**j / ((2 * j + 3) * (1 - z)))


def _psi_series(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    """PSI-1 on one (t, J): 0 <= R_J/psi <= bound; where t <= t0 of the dtype, also the configured J's bound
    < eps/4 (the truncation the implementation relies on, PSI-3)."""
    t, j = float(case[0]), int(case[1])
    rem, bound = psi_series_remainder(t, j)
    if has_nan(rem, bound) or not rem >= 0:
        return math.inf  # every omitted term is positive
    margin = ratio(rem, bound)
    t0, j_impl = PSI_SPLIT[compute_dtype(dtype)]
    if t <= t0:
        _, bound_impl = psi_series_remainder(t, j_impl)
        margin = fold(margin, ratio(bound_impl, eps(compute_dtype(dtype)) / 4))
    return margin


def _psi_series_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    t0, _ = PSI_SPLIT[compute_dtype(dtype)]
    ts = st.one_of(log_uniform(1e-12, _PSI1_T_MAX), st.sampled_from([t0, math.nextafter(t0, 0.0), _PSI1_T_MAX]))
    return st.tuples(ts, st.integers(min_value=1, max_value=12))


register(
    Check(
        claim="PSI-1",
        subject="psi",
        strategy=_psi_series_cases,
        run=_psi_series,
        metric="reference self-check (calls no kernel): max(R_J/psi / (w^(2J)/((2J+3)(1-w^2))), configured bound "
               "at t <= t0 / (eps/4)); inf if R_J < 0",
        dtypes=DEFAULT_DTYPES,  # per dtype only through the configured (t0, J) of that compute dtype
        calls_kernel=False,
        examples=lambda dtype: [(_PSI1_T_MAX, 12), (1.0, 8), (0.1, 7), (1e-8, 1)],
    )
)


# ---- PSI-3: accuracy ----------------------------------------------------------------------------

# PSI-3's derived bounds (proofs/special.md): the series branch <= (J + 12) u (float64 J = 7: < 10 eps; float32
# J = 8: 10 eps); the direct branch <= c(t0) 2u + u with the cancellation factor c(t) = (log1p t + t/(1+t))/psi(t)
# at the switch t0: float64 c(0.1) < 43, so < 44 eps = 9.8e-15; float32 c(1) < 6.2, so < 7 eps. The larger of the
# two: 44 eps (float64), 10 eps = 1.2e-6 (float32). The rounder 1e-13 / 2e-6 used as eps_psi by KL-1 and N4 are
# looser and remain true; this check enforces the derived ones. float16/bfloat16: float32, rounded once: + u_dtype.
_PSI_TOL: dict[torch.dtype, float] = {torch.float64: 44 * eps(torch.float64), torch.float32: 10 * eps(torch.float32)}
_PSI_RANGE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-300, 1e300),
    torch.float32: (1e-30, 1e30),
    torch.float16: (6.2e-5, 6.0e4),
    torch.bfloat16: (1e-30, 1e30),
}


def psi_tol(dtype: torch.dtype) -> float:
    """PSI-3's relative bound for ``dtype``: 44 eps (float64), 10 eps (float32), 10 eps_32 + u_d (float16/bfloat16)."""
    if dtype in _PSI_TOL:
        return _PSI_TOL[dtype]
    return _PSI_TOL[torch.float32] + eps(dtype) / 2


_psi_tol = psi_tol


def _psi_accuracy(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    t = round_to(float(case), dtype)
    got = float(psi(_scalar(t, device, dtype)).double())
    ref = psi_ref(t)
    if has_nan(got, ref) or got < 0:
        return math.inf
    if ref < smallest_normal(dtype):
        # Below the normal range: 0 or subnormal, never negative (and never above tiny by more than
        # the rounding of the tiny itself).
        return 0.0 if got <= smallest_normal(dtype) else math.inf
    return ratio(rel_err(got, ref), _psi_tol(dtype))


def _psi_examples(dtype: torch.dtype) -> Sequence[Any]:
    lo, hi = _PSI_RANGE[dtype]
    t0 = {torch.float64: 0.1, torch.float32: 1.0}.get(dtype, 1.0)
    # 1e-8 in float32 is the textbook formula's 100% failure; the switch point on both sides.
    return [1e-8, 1e-6, 1e-4, t0, math.nextafter(t0, 0.0), math.nextafter(t0, 2.0), lo, hi, 1.0]


register(
    Check(
        claim="PSI-3",
        subject="psi",
        strategy=lambda dtype: log_uniform(*_PSI_RANGE[dtype]),
        run=_psi_accuracy,
        metric="rel err / derived tol (44 eps f64, 10 eps f32, 10 eps_32 + u f16/bf16)",
        dtypes=ALL_DTYPES,
        examples=_psi_examples,
    )
)


# ---- PSI-2: shape (psi(0)=0, >=0, increasing, <= t^2/2, <= log1p t) -----------------------------


def _psi_shape(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    t1, t2 = sorted((round_to(float(case[0]), dtype), round_to(float(case[1]), dtype)))
    out = psi(torch.tensor([0.0, t1, t2], dtype=dtype, device=device)).double().cpu().tolist()
    p0, p1, p2 = out
    if has_nan(out) or p0 != 0.0 or p1 < 0 or p2 < 0:
        return math.inf
    # Computed values carry relative error <= tol (PSI-3), so the exact inequalities hold up to it:
    # psi(t1) <= psi(t2)(1+tol)/(1-tol), and psi(t) <= bound(t)*(1+tol). Bounds are evaluated in float64.
    tol = _psi_tol(dtype) if dtype in _PSI_TOL else _psi_tol(dtype) + eps(dtype)
    tiny = smallest_normal(dtype)
    margins: list[float] = [0.0]
    # Relative statements are made where the values are normal floats; a subnormal result carries an
    # absolute rounding of up to tiny * eps/2 and only has to be in [0, tiny] (PSI-3).
    if p1 >= tiny and p2 >= tiny:
        margins.append((p1 / p2) / ((1 + tol) / (1 - tol)))
    elif p1 > p2 + tiny * eps(dtype):
        return math.inf
    for t, p in ((t1, p1), (t2, p2)):
        if p >= tiny:
            margins.append(p / ((t * t / 2) * (1 + tol)) if t < 1e150 else 0.0)
            margins.append(p / (math.log1p(t) * (1 + tol)))
    return fold(margins)


register(
    Check(
        claim="PSI-2",
        subject="psi",
        strategy=lambda dtype: st.tuples(log_uniform(*_PSI_RANGE[dtype]), log_uniform(*_PSI_RANGE[dtype])),
        run=_psi_shape,
        metric="worst of psi(t1)/psi(t2), psi/(t^2/2), psi/log1p(t), with rounding slack",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [(1e-8, 1e-8), (0.1, 0.1000001), (1.0, 1.0000001), (1e-3, 1e3)],
    )
)


# ---- PSI-4: gradient accurate and in [0, 1/4] ---------------------------------------------------

def psi_grad_tol(dtype: torch.dtype) -> float:
    """PSI-4: psi'(t) = s/(1+t), s = t/(1+t), in the compute dtype: fl(1+t) (u), s (u), the divide (u), and
    fl(1+t) once more in the denominator (u): (1+u)^4/(1-u)^0 - 1 <= gamma_4 = 4u/(1 - 4u), i.e. 2 eps_c to first
    order; the chain-rule multiply by the incoming 1.0 and the clamp at 1/4 (towards the truth) add nothing.
    float16/bfloat16 are computed in float32 and cast once: + u_dtype."""
    cd = compute_dtype(dtype)
    uc = eps(cd) / 2
    extra = eps(dtype) / 2 if cd != dtype else 0.0
    return 4 * uc / (1 - 4 * uc) + extra


def _psi_grad(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    t = round_to(float(case), dtype)
    x = _scalar(t, device, dtype, grad=True)
    (grad,) = torch.autograd.grad(psi(x).sum(), x)
    g = float(grad.double())
    if has_nan(g) or not math.isfinite(g) or g < 0 or g > 0.25:
        return math.inf  # psi' lies in [0, 1/4] exactly (max 1/4 at t = 1), so the computed one must too
    ref = dpsi_ref(t)
    if ref < smallest_normal(dtype):
        return 0.0 if g <= smallest_normal(dtype) else math.inf
    return ratio(rel_err(g, ref), psi_grad_tol(dtype))


#: How far from t = 1 the PSI-4 search reaches, in ulps of the dtype (1/4 is attained at t = 1 only, and an
#: unclamped s/(1+t) rounds above 1/4 within a few thousand ulps of it).
NEAR_ONE_ULPS = 20_000


def near_one(dtype: torch.dtype) -> st.SearchStrategy[float]:
    """Floats of ``dtype`` within NEAR_ONE_ULPS ulps of 1 on either side (spacing eps above 1, eps/2 below)."""
    e = eps(dtype)
    return st.integers(-NEAR_ONE_ULPS, NEAR_ONE_ULPS).map(lambda k: 1.0 + k * (e if k >= 0 else e / 2)).filter(
        lambda v: v > 0.0)


def _psi_grad_cases(dtype: torch.dtype) -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), log_uniform(*_PSI_RANGE[dtype]), near_one(dtype))


def _psi_grad_examples(dtype: torch.dtype) -> Sequence[Any]:
    # t = 1 and its neighbours (where psi' = 1/4 and an unclamped rounding exceeds it), 0, small t, the top.
    return [1.0, *neighbours(1.0, dtype), 1.0 + 3 * eps(dtype), 1.0 - 3 * eps(dtype) / 2, 0.0, 1e-8,
            _PSI_RANGE[dtype][1]]


register(
    Check(
        claim="PSI-4",
        subject="psi",
        strategy=_psi_grad_cases,
        run=_psi_grad,
        metric="rel err of psi'(t) / gamma_4 (+ u_d), inf unless psi' in [0, 1/4]",
        dtypes=ALL_DTYPES,
        examples=_psi_grad_examples,
    )
)


# ---- SP-1: softplus finite, saturates to x, accurate --------------------------------------------

# F.softplus below T: log1p(exp(x)): exp <= 1 ulp, log1p <= 1 ulp, and the exp error is damped by
# sigmoid(x) <= 1 when passed through log1p: rel err <= 2 eps + u. Above T it returns x, whose relative
# distance to softplus(x) is log1p(e^-x)/x < e^-T/T < u (proofs/special.md, SP-1). Allowed: 3 eps,
# plus u_dtype for float16/bfloat16 (computed in float32, rounded once).
def _sp_tol(dtype: torch.dtype) -> float:
    if dtype in (torch.float16, torch.bfloat16):
        return 3 * eps(torch.float32) + eps(dtype) / 2
    return 3 * eps(dtype)


def _softplus_accuracy(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    x = round_to(float(case), dtype)
    got = float(softplus(_scalar(x, device, dtype)).double())
    if not math.isfinite(got):
        return math.inf
    ref = softplus_ref(x)
    if has_nan(ref):
        return math.inf
    if ref < smallest_normal(dtype):
        return 0.0 if 0 <= got <= smallest_normal(dtype) else math.inf
    return ratio(rel_err(got, ref), _sp_tol(dtype))


def _finite_x(dtype: torch.dtype) -> st.SearchStrategy[float]:
    m = _max(dtype)
    return st.one_of(
        st.floats(min_value=-120.0, max_value=120.0),
        log_uniform(1e-30, m).map(lambda v: v),
        log_uniform(1e-30, m).map(lambda v: -v),
    )


register(
    Check(
        claim="SP-1",
        subject="softplus",
        strategy=_finite_x,
        run=_softplus_accuracy,
        metric="rel err / 3 eps (finite for every finite x)",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [100.0, -100.0, 0.0, 17.0, 37.0, _max(dtype), -_max(dtype), 1e-8],
    )
)


# ---- SP-2: softplus(inv_softplus(y)) == y ---------------------------------------------------------

# The constants of proofs/special.md, SP-2 (lemmas L1-L4). K_INV: the absolute error of the computed
# l(y) = log(1 - e^-y) beyond eps_c |l| (L2, special_sympy.py::check_inverse_constants). K_SP_UNDER: the
# absolute error of the computed softplus, in units of eps_c tau_c, where softplus(x) < tau_c (L1).
K_INV = 1.02
K_SP_UNDER = 2.01


def _units(dtype: torch.dtype) -> tuple[float, float, float, float, float]:
    """(u_c, eps_c, tau_c, u_d, tau_d): unit roundoff, eps and smallest normal of the compute dtype, and the
    storage rounding's u_d, tau_d (both 0 when the dtype is its own compute dtype: no storage rounding)."""
    cd = compute_dtype(dtype)
    ec, tc = eps(cd), smallest_normal(cd)
    if cd == dtype:
        return ec / 2, ec, tc, 0.0, 0.0
    return ec / 2, ec, tc, eps(dtype) / 2, smallest_normal(dtype)


def _sp_lsigmoid_ratio(z: float) -> float:
    """h(z) = sigmoid(z)/softplus(z) = d ln softplus / dz, decreasing from 1 to 0 (SP-2, L4)."""
    with mpmath.workdps(30):
        zz = mpmath.mpf(z)
        return float(1 / ((1 + mpmath.exp(-zz)) * mpmath.log1p(mpmath.exp(zz))))


def _inv_exact(y: float) -> tuple[float, float]:
    """(l, x) = (log(1 - e^-y), y + l) for y > 0, from mpmath (x is rounded once to float64)."""
    with mpmath.workdps(40):
        yy = mpmath.mpf(y)
        ll = mpmath.log(-mpmath.expm1(-yy))
        return float(ll), float(yy + ll)


def inv_softplus_error_bound(y: float, dtype: torch.dtype) -> float:
    """SP-2 (L2, L3): |inv_softplus(y) - x| <= Delta for a positive normal y of ``dtype``, x = y + l exact.

    Delta_c = (1 + u_c) eps_c (|l| + 1.02) + u_c |x| for the evaluation in the compute dtype, and
    Delta = Delta_c + u_d (|x| + Delta_c + tau_d) once x is stored in float16/bfloat16.
    """
    uc, ec, _, ud, td = _units(dtype)
    l_val, x = _inv_exact(y)
    delta_c = (1 + uc) * ec * (abs(l_val) + K_INV) + uc * abs(x)
    # Products distributed, so that no float64 partial sum near the float64 maximum rounds to inf.
    return delta_c + ud * abs(x) + ud * delta_c + ud * td


def round_trip_y_bound(y: float, dtype: torch.dtype) -> float:
    """SP-2 bound on |softplus(inv_softplus(y)) - y| / y (proofs/special.md, SP-2).

    B(y) = (1 + E)(1 + 2 eps_c + u_c)(1 + u_d) - 1 + (2.01 eps_c tau_c (1 + u_d) + u_d tau_d) / y with
    E = expm1(Delta H), Delta the error of the stored x (inv_softplus_error_bound) and
    H = h(x - Delta), h = sigmoid/softplus, the largest slope of ln softplus on [x - Delta, x + Delta].
    No first-order step: in bfloat16 Delta reaches 0.34 (x ~ -87 rounded to 8 bits), where E = 0.41 and
    the linearised Delta H would fall 17% short.
    """
    uc, ec, tc, ud, td = _units(dtype)
    _, x = _inv_exact(y)
    delta = inv_softplus_error_bound(y, dtype)
    e_fwd = math.expm1(delta * _sp_lsigmoid_ratio(x - delta))
    return (1 + e_fwd) * (1 + 2 * ec + uc) * (1 + ud) - 1 + (K_SP_UNDER * ec * tc * (1 + ud) + ud * td) / y


def _round_trip_y(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    y = round_to(float(case), dtype)
    if not (y >= smallest_normal(dtype)):
        return 0.0
    x_t = inv_softplus(_scalar(y, device, dtype))
    got = float(softplus(x_t).double())
    x_got = float(x_t.double())
    if not (math.isfinite(got) and math.isfinite(x_got)):
        return math.inf
    # Both halves of SP-2: the stored x within Delta (L3), and the round trip within B(y).
    x_ref = _inv_exact(y)[1]
    x_err = ratio(abs(x_got - x_ref), inv_softplus_error_bound(y, dtype))
    return guarded(fold(x_err, ratio(abs(got - y) / y, round_trip_y_bound(y, dtype))), x_ref)


register(
    Check(
        claim="SP-2",
        subject="inv_softplus",
        strategy=lambda dtype: log_uniform(smallest_normal(dtype), _max(dtype)),
        run=_round_trip_y,
        metric="max(|inv_softplus(y) - x| / Delta, |softplus(inv_softplus(y)) - y| / y / B(y)), SP-2",
        dtypes=ALL_DTYPES,
        # 1e-8 and 100: the naive formula's failures. 2.2877e-30 and 7.6952e-29: bfloat16
        # counterexamples to a first-order bound (x ~ -68.25 stored as -68.0, e^0.25 - 1 = 0.28).
        examples=lambda dtype: [1e-8, 100.0, smallest_normal(dtype), _max(dtype), math.log(2.0), 1.0,
                                2.2877133688586172e-30, 7.695168749633525e-29],
    )
)


# ---- SP-3: inv_softplus(softplus(x)) == x --------------------------------------------------------


def round_trip_x_bound(x: float, dtype: torch.dtype) -> float:
    """SP-3 bound on |inv_softplus(softplus(x)) - x| (absolute), proofs/special.md, SP-3.

    With y = softplus(x): the stored y~ is within E_y = e1 + u_d (y + e1 + tau_d), e1 = (2 eps_c + u_c) y
    + 2.01 eps_c tau_c (L1, L3); the exact inverse moves by A1 = E_y / (1 - exp(-(y - E_y))) (its slope
    1/(1 - e^-v) is decreasing); its evaluation adds A2 = Delta_c at y~ (L2) with |l(y~)| <= sp(-x) + A1
    + E_y and |x~| <= |x| + A1; storing the result adds A3 = u_d (|x| + A1 + A2 + tau_d).
    """
    uc, ec, tc, ud, td = _units(dtype)
    y = float(softplus_ref(x))
    sp_mx = float(softplus_ref(-x))
    e1 = (2 * ec + uc) * y + K_SP_UNDER * ec * tc
    e_y = e1 + ud * (y + e1 + td)
    a1 = e_y / -math.expm1(-(y - e_y))
    a2 = (1 + uc) * ec * (sp_mx + a1 + e_y + K_INV) + uc * abs(x) + uc * a1
    a3 = ud * abs(x) + ud * (a1 + a2 + td)
    return a1 + a2 + a3


def _round_trip_x(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    x = round_to(float(case), dtype)
    # Unsaturated: softplus(x) must be a normal float of the dtype.
    if float(softplus_ref(x)) < smallest_normal(dtype):
        return 0.0
    got = float(inv_softplus(softplus(_scalar(x, device, dtype))).double())
    if not math.isfinite(got):
        return math.inf
    return ratio(abs(got - x), round_trip_x_bound(x, dtype))


register(
    Check(
        claim="SP-3",
        subject="inv_softplus",
        strategy=_finite_x,
        run=_round_trip_x,
        metric="|inv_softplus(softplus(x)) - x| / (A1 + A2 + A3), SP-3",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [0.0, -18.42, 100.0, -80.0, 17.0, 1e-8, -1e-8],
    )
)


# ---- deterministic reference sweeps (scipy's _mptestutils style) --------------------------------


def on_grid(values: Sequence[float], dtype: torch.dtype) -> list[float]:
    """The distinct finite values of ``dtype`` nearest to ``values``, sorted."""
    t = torch.tensor(list(values), dtype=torch.float64).to(dtype)
    t = t[torch.isfinite(t)]
    return sorted(set(t.double().tolist()))


def neighbours(v: float, dtype: torch.dtype) -> list[float]:
    """``v`` rounded to ``dtype`` and the floats of ``dtype`` on either side: both sides of a switch point."""
    t = torch.tensor([v], dtype=torch.float64).to(dtype)
    up = torch.nextafter(t, torch.full_like(t, math.inf))
    down = torch.nextafter(t, torch.full_like(t, -math.inf))
    return on_grid([float(down.double()), float(t.double()), float(up.double())], dtype)
