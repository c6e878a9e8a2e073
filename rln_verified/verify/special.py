"""Checks of PSI-* and SP-* (proofs/special.md) against mpmath references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mpmath
import torch
from hypothesis import strategies as st

from rln_verified._special import _PSI_SPLIT, _SOFTPLUS_THRESHOLD, inv_softplus, psi, softplus
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
    t0, j_impl = _PSI_SPLIT[compute_dtype(dtype)]
    if t <= t0:
        _, bound_impl = psi_series_remainder(t, j_impl)
        margin = fold(margin, ratio(bound_impl, eps(compute_dtype(dtype)) / 4))
    return margin


def _psi_series_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    t0, _ = _PSI_SPLIT[compute_dtype(dtype)]
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


def inv_softplus_error_bound_t(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`inv_softplus_error_bound` for a float64 tensor of positive normal ``y``, with (l, x) from float64
    instead of mpmath: for the exhaustive sweeps. The float64 l and x are off by <= 4 u_64 (|l| + |y|), under
    1e-8 of Delta (Delta >= eps_c 1.02 absolute), so the bound and the reference move by less than that."""
    uc, ec, _, ud, td = _units(dtype)
    l_val = torch.log(-torch.expm1(-y))
    x = y + l_val
    delta_c = (1 + uc) * ec * (l_val.abs() + K_INV) + uc * x.abs()
    return delta_c + ud * x.abs() + ud * delta_c + ud * td


def inv_softplus_exhaustive(device: str | torch.device, dtype: torch.dtype, lo: float, hi: float,
                            chunk: int = 1 << 22) -> tuple[float, float]:
    """SP-2 (a) at every float of ``dtype`` in [lo, hi) (positive normals): the largest |x~ - x| / Delta and the y
    where it occurs. x is the float64 y + log(-expm1(-y)) (see :func:`inv_softplus_error_bound_t`). NaN is inf."""
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
    ends = torch.tensor([max(lo, smallest_normal(dtype)), hi], dtype=torch.float64).to(dtype).view(bits).long().tolist()
    worst, where = 0.0, math.nan
    for start in range(ends[0], ends[1], chunk):
        ints = torch.arange(start, min(start + chunk, ends[1]), dtype=torch.int64)
        y = ints.to(bits).view(dtype)
        got = inv_softplus(y.to(device)).double().cpu()
        y64 = y.double()
        ref = y64 + torch.log(-torch.expm1(-y64))
        r = (got - ref).abs() / inv_softplus_error_bound_t(y64, dtype)
        r = torch.where(torch.isnan(r), torch.full_like(r, math.inf), r)
        i = int(r.argmax())
        if float(r[i]) > worst:
            worst, where = float(r[i]), float(y64[i])
    return worst, where


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


@dataclass
class Sweep:
    """Worst errors of a deterministic sweep against a reference, reported as scipy's ``_mptestutils`` does:
    the worst absolute and relative differences with the arguments that produced them, and the points where
    the claim's allowance is exceeded (or a qualitative property fails)."""

    name: str
    points: int = 0
    worst_abs: tuple[float, Any] = (0.0, None)
    worst_rel: tuple[float, Any] = (0.0, None)
    worst_margin: tuple[float, Any] = (0.0, None)
    bad: list[str] = field(default_factory=list)

    def add(self, arg: Any, got: float, ref: float | mpmath.mpf, allowed: float) -> None:
        """One compared point: ``|got - ref| <= allowed`` (absolute) is the claim there."""
        self.points += 1
        if has_nan(got, ref, allowed) or not math.isfinite(got):
            self.fail(arg, f"got {got!r}, reference {float(ref)!r}, allowed {allowed!r}")
            return
        diff = abs(mpmath.mpf(got) - ref)
        abs_err = float(diff)
        rel = float(diff / abs(ref)) if ref != 0 else (0.0 if diff == 0 else math.inf)
        margin = abs_err / allowed if allowed > 0 else (0.0 if diff == 0 else math.inf)
        if abs_err > self.worst_abs[0] or self.worst_abs[1] is None:
            self.worst_abs = (max(abs_err, self.worst_abs[0]), arg)
        if rel > self.worst_rel[0] or self.worst_rel[1] is None:
            self.worst_rel = (max(rel, self.worst_rel[0]), arg)
        if margin > self.worst_margin[0] or self.worst_margin[1] is None:
            self.worst_margin = (max(margin, self.worst_margin[0]), arg)
        if margin > 1.0:
            self.bad.append(f"{arg!r}: got {got!r}, reference {float(ref)!r}, "
                            f"|diff| {abs_err:.3g} > allowed {allowed:.3g}")

    def check(self, arg: Any, ok: bool, why: str) -> None:
        """One qualitative property at ``arg`` (finite, >= 0, 0 or subnormal below the normal range...)."""
        self.points += 1
        if not ok:
            self.fail(arg, why)

    def fail(self, arg: Any, why: str) -> None:
        self.bad.append(f"{arg!r}: {why}")
        self.worst_margin = (math.inf, arg)

    @property
    def ok(self) -> bool:
        return not self.bad

    def report(self) -> str:
        lines = [
            f"{self.name}: {self.points} points, {len(self.bad)} outside the claim",
            f"  max |abs diff| {self.worst_abs[0]:.3g} at {self.worst_abs[1]!r}",
            f"  max |rel diff| {self.worst_rel[0]:.3g} at {self.worst_rel[1]!r}",
            f"  max diff / allowed {self.worst_margin[0]:.3g} at {self.worst_margin[1]!r}",
        ]
        lines += [f"  bad: {b}" for b in self.bad[:10]]
        if len(self.bad) > 10:
            lines.append(f"  ... and {len(self.bad) - 10} more")
        return "\n".join(lines)


def decades(lo: float, hi: float, per_decade: float) -> list[float]:
    """Log-spaced points over ``[lo, hi]`` (0 < lo < hi), ``per_decade`` per factor of 10 (may be fractional),
    ends included."""
    a, b = math.log10(lo), math.log10(hi)
    n = max(1, math.ceil((b - a) * per_decade))
    return [lo] + [10.0 ** (a + (b - a) * k / n) for k in range(1, n)] + [hi]


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


def _smallest_subnormal(dtype: torch.dtype) -> float:
    return smallest_normal(dtype) * eps(dtype)


def _evaluate(fn: Any, values: Sequence[float], device: str | torch.device, dtype: torch.dtype) -> list[float]:
    out: list[float] = fn(torch.tensor(list(values), dtype=dtype, device=device)).double().cpu().tolist()
    return out


def psi_sweep(device: str | torch.device, dtype: torch.dtype, per_decade: int = 4) -> Sweep:
    """psi over every order of magnitude of ``dtype`` (smallest subnormal to the largest float), plus both
    sides of the series/direct switch t0, of 1/u_c (where 1 + t rounds to t) and of the edge of psi's
    underflow, against psi_ref. PSI-3: relative error <= its tolerance wherever t is in the stated range and
    psi(t) is a normal float; 0 or subnormal, never negative, below; finite and >= 0 everywhere."""
    cd = compute_dtype(dtype)
    lo, hi = _PSI_RANGE[dtype]
    t0, _ = _PSI_SPLIT[cd]
    tiny, tol = smallest_normal(dtype), _psi_tol(dtype)
    pts = decades(_smallest_subnormal(dtype), _max(dtype), per_decade)
    # Dense where the direct form's cancellation factor c(t) is large (t just above any switch in [1e-3, 10]): a
    # switch moved down or a direct form less careful than log1p shows here first (PSI-3's bound is attained there).
    pts += decades(1e-3, 10.0, 100)
    for v in (t0, 1.0 / (eps(cd) / 2), math.sqrt(2.0 * tiny), lo, hi, 1e-8, 1e-6, 1e-4):
        pts += neighbours(v, dtype)
    ts = [0.0] + [t for t in on_grid(pts, dtype) if t > 0]
    sw = Sweep(f"psi {str(dtype).removeprefix('torch.')} [{device}], t in [{lo:g}, {hi:g}], rel tol {tol:.3g}")
    for t, got in zip(ts, _evaluate(psi, ts, device, dtype)):
        if not (math.isfinite(got) and got >= 0):
            sw.fail(t, f"psi = {got!r}: not finite and >= 0")
            continue
        ref = psi_ref(t)
        if ref < tiny:
            sw.check(t, got <= tiny, f"psi = {got!r} above the normal range, true {float(ref):.5g}")
        elif lo <= t <= hi:
            sw.add(t, got, ref, tol * float(ref))
    return sw


def softplus_sweep(device: str | torch.device, dtype: torch.dtype, per_decade: int = 3) -> Sweep:
    """softplus at +-x over every order of magnitude of ``dtype``, 0, and both sides of the saturation
    threshold T, of exp's overflow point ln(max_c), and of the edges where softplus(x) leaves the normal range
    (ln tiny) and underflows (ln of the smallest subnormal). SP-1: finite for every finite x; exactly x above
    T; relative error <= 3 eps_c (+ u_d) wherever softplus(x) is normal; 0 or subnormal below."""
    cd = compute_dtype(dtype)
    big_t = _SOFTPLUS_THRESHOLD[cd]
    tiny, tol = smallest_normal(dtype), _sp_tol(dtype)
    mags = decades(_smallest_subnormal(dtype), _max(dtype), per_decade)
    pts = mags + [-m for m in mags] + [0.0, 100.0, -100.0]
    for v in (big_t, math.log(_max(cd)), math.log(tiny), math.log(_smallest_subnormal(dtype))):
        pts += neighbours(v, dtype)
    xs = on_grid(pts, dtype)
    sw = Sweep(f"softplus {str(dtype).removeprefix('torch.')} [{device}], T = {big_t:g}, rel tol {tol:.3g}")
    for x, got in zip(xs, _evaluate(softplus, xs, device, dtype)):
        if not math.isfinite(got):
            sw.fail(x, f"softplus = {got!r} for a finite x")
            continue
        if x > big_t:
            sw.check(x, got == x, f"softplus = {got!r} != x above T = {big_t:g}")
        ref = softplus_ref(x)
        if ref < tiny:
            sw.check(x, 0.0 <= got <= tiny, f"softplus = {got!r} outside [0, tiny], true {float(ref):.5g}")
        else:
            sw.add(x, got, ref, tol * float(ref))
    return sw


def inv_softplus_sweep(device: str | torch.device, dtype: torch.dtype, per_decade: int = 4) -> tuple[Sweep, Sweep]:
    """inv_softplus over every order of magnitude of the positive normal floats of ``dtype``, both sides of
    the branch switch ln 2, the ends, and the pinned counterexamples. SP-2 (a): the result within Delta of
    x = y + ln(1 - e^-y); SP-2 (b): softplus(inv_softplus(y)) within B(y) y of y. Returns (inverse, round trip)."""
    tiny, top = smallest_normal(dtype), _max(dtype)
    pts = [*decades(tiny, top, per_decade), 1e-8, 100.0, 17.0, 37.0, 2.2877133688586172e-30, 7.695168749633525e-29]
    pts += neighbours(math.log(2.0), dtype) + neighbours(tiny, dtype) + neighbours(top, dtype)
    ys = [y for y in on_grid(pts, dtype) if y >= tiny]
    name = f"{str(dtype).removeprefix('torch.')} [{device}]"
    inv_sw = Sweep(f"inv_softplus {name}, |x - x_true| <= Delta (SP-2 a)")
    rt_sw = Sweep(f"softplus(inv_softplus(y)) {name}, rel <= B(y) (SP-2 b)")
    x_t = inv_softplus(torch.tensor(ys, dtype=dtype, device=device))
    back = softplus(x_t).double().cpu().tolist()
    for y, x_got, y_got in zip(ys, x_t.double().cpu().tolist(), back):
        with mpmath.workdps(40):
            yy = mpmath.mpf(y)
            x_ref = +(yy + mpmath.log(-mpmath.expm1(-yy)))
        inv_sw.add(y, x_got, x_ref, inv_softplus_error_bound(y, dtype))
        rt_sw.add(y, y_got, mpmath.mpf(y), round_trip_y_bound(y, dtype) * y)
    return inv_sw, rt_sw
