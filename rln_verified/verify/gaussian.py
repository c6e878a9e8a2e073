"""Checks of GAUSS-*, RELU-*, CRELU-* and KL-* (proofs/gaussian.md) against mpmath references."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import mpmath
import torch
from hypothesis import strategies as st

from rln_verified._gaussian import (
    X_SPLIT,
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_logcdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._validation import compute_dtype
from rln_verified.verify._core import (
    ALL_DTYPES,
    DEFAULT_DTYPES,
    Check,
    NotApplicable,
    finite_floats,
    log_uniform,
    register,
    round_to,
    smallest_normal,
    unit_roundoff,
)
from rln_verified.verify._margins import fold, guarded, has_nan, ratio
from rln_verified.verify._margins import rel_err as rel_err

U64 = 2.0**-53

# ---- references ------------------------------------------------------------------------------------


def relu_moments_ref(mu: float, sigma: float) -> tuple[mpmath.mpf, mpmath.mpf]:
    """Mean and variance of relu(N(mu, sigma^2)) from the Phi/phi closed forms at 90 digits (the textbook
    variance loses up to ~4 log10|a| digits to cancellation, so 90 leaves more than 50)."""
    with mpmath.workdps(90):
        m, s = mpmath.mpf(mu), mpmath.mpf(sigma)
        if s == 0:
            return (m if m > 0 else mpmath.mpf(0)), mpmath.mpf(0)
        a = m / s
        cdf, pdf = mpmath.ncdf(a), mpmath.npdf(a)
        mean = s * (a * cdf + pdf)
        e2 = s * s * ((a * a + 1) * cdf + a * pdf)
        return +mean, +(e2 - mean * mean)


def relu_grads_ref(mu: float, sigma: float) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """(dmean/dmu, dmean/dsigma, dvar/dmu, dvar/dsigma) at 90 digits (RELU-5 formulas, sympy-checked)."""
    with mpmath.workdps(90):
        m, s = mpmath.mpf(mu), mpmath.mpf(sigma)
        a = m / s
        cdf, pdf = mpmath.ncdf(a), mpmath.npdf(a)
        mean = s * (a * cdf + pdf)
        return +cdf, +pdf, +(2 * mean * mpmath.ncdf(-a)), +(2 * (s * cdf - mean * pdf))


def kl_ref(mq: float, sq: float, mp: float, sp: float) -> mpmath.mpf:
    """KL at 100 digits; g(r) is summed on its own (g ~ 2(r-1)^2 cancels ~2|log10(r-1)| digits) and only
    then added to d^2, which may be far below 1."""
    with mpmath.workdps(100):
        r = mpmath.mpf(sq) / mpmath.mpf(sp)
        d = (mpmath.mpf(mq) - mpmath.mpf(mp)) / mpmath.mpf(sp)
        g = r * r - 1 - 2 * mpmath.log(r)
        return +((d * d + g) / 2)


def logcdf_ref(z: mpmath.mpf) -> mpmath.mpf:
    """log Phi(z); for z > 0 as log1p(-Q(z)), since 1 - Q(z) would drop Q's digits at any fixed precision."""
    return mpmath.log1p(-mpmath.ncdf(-z)) if z > 0 else mpmath.log(mpmath.ncdf(z))


def _below_normal(got: float, ref: mpmath.mpf, dtype: torch.dtype) -> float | None:
    """Outside the accuracy claim (true value not a normal float): only sign and size are checked. The computed
    value must be 0 or of the true value's sign, and at most tiny in magnitude; NaN is a violation."""
    if has_nan(got, ref):
        return math.inf
    if abs(ref) >= smallest_normal(dtype):
        return None
    same_sign = got == 0.0 or (got > 0) == (ref > 0)
    return 0.0 if same_sign and abs(got) <= smallest_normal(dtype) else math.inf


# ---- GAUSS-1: pdf / cdf / logcdf ------------------------------------------------------------------


def gauss_tol(z: float, dtype: torch.dtype) -> float:
    """GAUSS-1: (16 + 3 z^2) u_c, u_c of the compute dtype, plus one rounding to a narrower dtype."""
    cd = compute_dtype(dtype)
    extra = unit_roundoff(dtype) if cd != dtype else 0.0
    return (16.0 + 3.0 * z * z) * unit_roundoff(cd) + extra


# |z| up to where phi(z)/sigma can still be a normal float for the smallest sigma drawn (z^2/2 <= ln(1/(tiny
# sigma_min sqrt(2 pi)))): float64 53 (sigma = 1e-300), float32/bfloat16 17.5 (sigma = 1e-37); beyond, every
# result is below the normal range and only its sign and size are checked.
_Z_MAX: dict[torch.dtype, float] = {torch.float64: 53.0, torch.float32: 17.5, torch.float16: 5.0, torch.bfloat16: 17.5}
# GAUSS-1 is stated for every sigma > 0. sigma is drawn over the dtype's range, kept a factor ~1e2 inside the ends
# so that x = mu + z sigma (|mu| <= 100 sigma) stays finite and sigma stays normal.
_GAUSS_SIGMA: dict[torch.dtype, tuple[float, float]] = {torch.float64: (1e-300, 1e300), torch.float32: (1e-37, 1e36),
                                                        torch.float16: (0.1, 10.0), torch.bfloat16: (1e-37, 1e36)}


def _gauss_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    zmax = _Z_MAX[dtype]
    sig = log_uniform(*_GAUSS_SIGMA[dtype])
    mu_max = 100.0 if dtype != torch.float16 else 10.0
    # mu either of order 1 or of the order of sigma (k sigma), so that z = (x - mu)/sigma keeps its digits
    # at every scale of sigma.
    scaled = st.tuples(st.floats(-zmax, zmax), st.floats(-mu_max, mu_max), sig).map(
        lambda c: (c[0], c[1] * c[2], c[2]))
    plain = st.tuples(st.floats(-zmax, zmax), st.floats(-mu_max, mu_max), sig)
    return st.one_of(plain, scaled)


def _gauss_inputs(case: Any, dtype: torch.dtype) -> tuple[float, float, float, mpmath.mpf]:
    z0, m, s = (float(v) for v in case)
    m, s = round_to(m, dtype), round_to(s, dtype)
    x = round_to(m + z0 * s, dtype)
    with mpmath.workdps(60):
        z = (mpmath.mpf(x) - mpmath.mpf(m)) / mpmath.mpf(s)
    return x, m, s, z


def _make_gauss_run(
    name: str,
    ref: Callable[[mpmath.mpf, mpmath.mpf], mpmath.mpf],
) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = globals()[name]  # looked up per call
        x, m, s, z = _gauss_inputs(case, dtype)
        if not all(math.isfinite(v) for v in (x, m, s)):
            return 0.0  # the case does not fit the dtype: outside the claim (inputs finite)
        args = [torch.tensor([v], dtype=dtype, device=device) for v in (x, m, s)]
        got = float(fn(args[0], args[1], args[2]).double())
        with mpmath.workdps(60):
            want = ref(z, mpmath.mpf(s))
        small = _below_normal(got, want, dtype)
        if small is not None:
            return small
        if abs(want) > float(torch.finfo(dtype).max):
            return 0.0 if abs(got) == math.inf or abs(got) >= float(torch.finfo(dtype).max) else math.inf
        return ratio(rel_err(got, want), gauss_tol(float(z), dtype))

    return run


def _gauss_examples(dtype: torch.dtype) -> Sequence[Any]:
    zmax = _Z_MAX[dtype]
    # Both tails at their ends; z = -10 is where torch.special.ndtr fails on CPU; the logcdf switch at 1.
    out: list[Any] = [(-zmax, 0.0, 1.0), (zmax, 0.0, 1.0), (-10.0 if zmax > 10 else -zmax, 1.0, 2.0),
                      (-1.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 3.0, 0.5)]
    if dtype == torch.float64:
        # phi(z) subnormal, phi(z)/sigma normal: the power-of-two bookkeeping of normal_pdf (GAUSS-1).
        out += [(37.7, 0.0, 1e-3), (38.4, 0.0, 1e-10), (38.4, 0.0, 1e-20), (52.0, 0.0, 1e-300), (1.0, 0.0, 1e300),
                (-3.0, 1e300, 1e298)]
    elif dtype in (torch.float32, torch.bfloat16):
        out += [(14.0, 0.0, 1e-10), (17.0, 0.0, 1e-36), (1.0, 0.0, 1e36), (-3.0, 1e36, 1e34)]
    return out


_GAUSS_FUNCTIONS = (normal_pdf, normal_cdf, normal_logcdf)  # called through globals() by name (monkeypatchable)
for _name, _ref in (
    ("normal_pdf", lambda z, s: mpmath.npdf(z) / s),
    ("normal_cdf", lambda z, s: mpmath.ncdf(z)),
    ("normal_logcdf", lambda z, s: logcdf_ref(z)),
):
    register(
        Check(
            claim="GAUSS-1",
            subject=_name,
            strategy=_gauss_cases,
            run=_make_gauss_run(_name, _ref),
            metric="rel err / ((16 + 3 z^2) u)",
            dtypes=ALL_DTYPES,
            examples=_gauss_examples,
        )
    )


# ---- RELU-1: the moment identities and the kernel's forms, over the whole range of a ------------------

# Every identity of RELU-1 is evaluated on both sides in mpmath, with Hh_n(x) from the parabolic cylinder
# function, Hh_n(x) = exp(-x^2/4) D_{-n-1}(x)/sqrt(2 pi), which uses neither the closed forms nor the
# recurrence it is compared with. The worst cancellation among the forms is ~x^4 (the closed form of 2 Hh_2
# and the textbook variance in the tail, 4 log10(1+|a|) digits), so with 60 + 4 log10(1+|a|) working digits
# each side is exact to ~1e-55 relative; a discrepancy above 1e-40 is a false identity (a wrong form is O(1)).
_RELU1_TOL = 1e-40


def relu_identity_discrepancy(a: float, sigma: float) -> float:
    """Largest relative discrepancy among RELU-1's identities at (a, sigma), or inf if some Hh_n or r_n <= 0."""
    dps = 60 + int(4 * math.log10(1.0 + abs(a))) + 1
    with mpmath.workdps(dps):
        xx = -mpmath.mpf(a)
        aa, ss = -xx, mpmath.mpf(sigma)
        mu = aa * ss
        phi = mpmath.npdf(xx)
        q = mpmath.ncdf(-xx)  # Q(x) = Phi(a)
        q_a = mpmath.ncdf(xx)  # Phi(-a)
        scale = mpmath.exp(-xx * xx / 4) / mpmath.sqrt(2 * mpmath.pi)
        hh = {-1: phi}
        for n in range(5):
            hh[n] = scale * mpmath.pcfd(-n - 1, xx)
        if any(v <= 0 for v in hh.values()):
            return math.inf
        r = {n: hh[n] / hh[n - 1] for n in range(5)}
        mills = q / phi
        mean, e2 = ss * hh[1], 2 * ss * ss * hh[2]
        var = e2 - mean * mean
        pairs = [
            (hh[0], q), (hh[1], phi - xx * q), (2 * hh[2], (1 + xx * xx) * q - xx * phi),  # (1)
            *((n * hh[n], hh[n - 2] - xx * hh[n - 1]) for n in range(1, 5)),
            (mean, mu * q + ss * phi), (e2, ss * ss * ((aa * aa + 1) * q + aa * phi)),  # (2)
            (var, ss * ss * (q + aa * aa * q * q_a - aa * phi * (q - q_a) - phi * phi)),  # (3)
            (mean / ss, phi * (1 - xx * mills)), (e2 / (ss * ss), phi * ((1 + xx * xx) * mills - xx)),
            (var / (ss * ss), hh[1] * (2 * r[2] - hh[1])), (hh[1], phi * r[0] * r[1]),
            # (4) as n r_n = 1/r_{n-1} - x: the form 1/(x + n r_n) would cancel ~x^2/(2 ln 10) digits for
            # x << 0, where x + n r_n is tiny; this one cancels <= 2 log10|x| digits, only for x > 0.
            *((n * r[n], 1 / r[n - 1] - xx) for n in range(1, 5)),
        ]
        return fold([float(abs(lhs - rhs) / abs(lhs)) for lhs, rhs in pairs])


def _relu_identities(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    a, s = (float(v) for v in case)
    return ratio(relu_identity_discrepancy(a, s), _RELU1_TOL)


register(
    Check(
        claim="RELU-1",
        subject="relu_moments",
        strategy=lambda dtype: st.tuples(_ratios(), log_uniform(1e-3, 1e3)),
        run=_relu_identities,
        metric="reference self-check (calls no kernel): max relative discrepancy of the RELU-1 identities (mpmath, "
               "Hh_n from pcfd) / 1e-40",
        dtypes=(torch.float64,),  # exact arithmetic: the claim does not depend on a dtype
        calls_kernel=False,
        examples=lambda dtype: [(-X_SPLIT, 1.0), (0.0, 1.0), (-1e3, 2.0), (1e3, 0.5), (-40.0, 1.0), (1e-6, 1.0)],
    )
)


# ---- RELU-4: accuracy -----------------------------------------------------------------------------

# RELU-4 (proofs/gaussian.md): every dtype is computed in float64 and rounded once. The float64 error is
# <= (1.5 a^2 + 25) u64 + 2e-15 for a < -4.5, <= 3300 u64 for -4.5 <= a < 0, <= (2 min(a, 40)^2 + 30) u64 for
# a >= 0 (relu_tol_at); the stated uniform 1e-12 covers |a| <= 77, past where the moments underflow (|a| ~ 53).
# float32: the result is a normal float32 only for a >= -19 (sigma phi(a)/a^2 >= 2^-126 with sigma <= 2^128), where
# the float64 error is <= 3300 u64 = 3.7e-13; rounding once to float32 adds u32: u32 + 3300 u64 (1 + u32) = 5.96e-8.
_RELU_TOL: dict[torch.dtype, float] = {torch.float64: 1e-12, torch.float32: 2.0**-24 + 3300 * U64 * (1 + 2.0**-24)}
_SIGMA_RANGE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-300, 1e300),
    torch.float32: (1e-30, 1e30),
    torch.float16: (1e-2, 30.0),
    torch.bfloat16: (1e-30, 1e30),
}


def relu_tol(dtype: torch.dtype) -> float:
    """RELU-4's uniform bounds: 1e-12 (float64), u32 + 3300 u64 (float32, over the range where the result is a normal
    float32); float16/bfloat16 get one rounding of a float64 result: 1e-12 + u_d (looser than float32's derivation,
    kept as stated: their normal range is not derived separately)."""
    return _RELU_TOL.get(dtype, 1e-12 + unit_roundoff(dtype))


def relu_tol_at(a: float, dtype: torch.dtype) -> float:
    """RELU-4's bound at a = mu/sigma (proofs/gaussian.md): the float64 error of the branch, plus one rounding to a
    narrower dtype (u_d (1 + e64))."""
    if a < -4.5:
        e64 = (1.5 * a * a + 25.0) * U64 + 2e-15
    elif a < 0:
        e64 = 3300.0 * U64
    else:
        e64 = (2.0 * min(a, 40.0) ** 2 + 30.0) * U64
    if dtype == torch.float64:
        return e64
    return e64 + unit_roundoff(dtype) * (1.0 + e64)


def _ratios() -> st.SearchStrategy[float]:
    mag = st.one_of(st.floats(0.0, 60.0), log_uniform(1e-6, 1e3), st.floats(X_SPLIT - 0.01, X_SPLIT + 0.01))
    return st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])


def _relu_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    return st.tuples(_ratios(), log_uniform(*_SIGMA_RANGE[dtype]))


def _relu_inputs(case: Any, dtype: torch.dtype) -> tuple[float, float]:
    a, s = (float(v) for v in case)
    s = round_to(s, dtype)
    mu = round_to(a * s, dtype)
    if not math.isfinite(mu):
        mu = round_to(math.copysign(float(torch.finfo(dtype).max), a), dtype)
    return mu, s


def _relu_accuracy(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    mu, s = _relu_inputs(case, dtype)
    mean, var = relu_moments(torch.tensor([mu], dtype=dtype, device=device),
                             torch.tensor([s], dtype=dtype, device=device))
    got = (float(mean.detach().double()), float(var.detach().double()))
    want = relu_moments_ref(mu, s)
    if has_nan(got, want):
        return math.inf
    margins: list[float] = []
    for g, w in zip(got, want):
        if g < 0:
            return math.inf
        if w > float(torch.finfo(dtype).max):
            continue  # the true value overflows the dtype: outside the claim
        small = _below_normal(g, w, dtype)
        margins.append(small if small is not None else ratio(rel_err(g, w), relu_tol_at(mu / s, dtype)))
    return fold(margins)


def _relu_examples(dtype: torch.dtype) -> Sequence[Any]:
    out: list[Any] = [(-10.0, 1.0), (-40.0, 1.0), (-37.5, 1.0), (0.0, 1.0), (1e3, 1.0), (-1e3, 1.0), (-30.0, 3.0)]
    # Both sides of the branch switch a = -X_SPLIT, and of a = 0.
    for a in (-X_SPLIT, math.nextafter(-X_SPLIT, 0.0), math.nextafter(-X_SPLIT, -10.0), -1e-300, 1e-300):
        out.append((a, 1.0))
    if dtype == torch.float64:
        out += [(-53.0, 1e300), (-50.0, 1e200)]
    return out


register(
    Check(
        claim="RELU-4",
        subject="relu_moments",
        strategy=_relu_cases,
        run=_relu_accuracy,
        metric="max rel err (mean, var) / RELU-4's bound at a (f64 branch bound, + u_d once rounded)",
        dtypes=ALL_DTYPES,
        examples=_relu_examples,
    )
)


# ---- RELU-2: mean >= 0, var >= 0 for every input -----------------------------------------------------


def _any_finite(dtype: torch.dtype, lo: float | None = None) -> st.SearchStrategy[float]:
    big = float(torch.finfo(dtype).max)
    lo_v = -big if lo is None else lo
    return st.one_of(
        st.floats(lo_v, big, allow_nan=False, allow_infinity=False, width=64).map(lambda v: round_to(v, dtype)),
        st.sampled_from([0.0, smallest_normal(dtype), big, 1.0]).filter(lambda v: v >= lo_v),
    )


def _relu_signs(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    mu, s = (round_to(float(v), dtype) for v in case)
    mean, var = relu_moments(torch.tensor([mu, -mu], dtype=dtype, device=device),
                             torch.tensor([s, s], dtype=dtype, device=device))
    vals = torch.cat([mean, var]).double().cpu().tolist()
    return 0.0 if all(v >= 0 for v in vals) else math.inf  # NaN fails >= too


register(
    Check(
        claim="RELU-2",
        subject="relu_moments",
        strategy=lambda dtype: st.tuples(_any_finite(dtype), _any_finite(dtype, 0.0)),
        run=_relu_signs,
        metric="inf if a mean or variance is negative or NaN",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [(-10.0, 1.0), (-40.0, 1.0), (-60.0, 1.0), (1.0, 0.0),
                                (-1.0, float(torch.finfo(dtype).tiny))],
    )
)


# ---- RELU-3: sigma = 0 ------------------------------------------------------------------------------


def _relu_sigma_zero(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    mu = round_to(float(case), dtype)
    m_t = torch.tensor([mu], dtype=dtype, device=device, requires_grad=True)
    s_t = torch.zeros(1, dtype=dtype, device=device, requires_grad=True)
    mean, var = relu_moments(m_t, s_t)
    if float(mean.detach().double()) != max(mu, 0.0) or float(var.detach().double()) != 0.0:
        return math.inf
    g = []
    for out in (mean, var):
        gm, gs = torch.autograd.grad(out.sum(), (m_t, s_t), retain_graph=True)
        g += [float(gm.double()), float(gs.double())]
    # One-sided limits (RELU-3): dmean/dmu = 1[mu>0] (1/2 at 0), dmean/dsigma = phi(0) 1[mu=0], the rest 0.
    dm_dmu = 1.0 if mu > 0 else (0.5 if mu == 0 else 0.0)
    dm_ds = 1.0 / math.sqrt(2.0 * math.pi) if mu == 0 else 0.0
    want = [dm_dmu, dm_ds, 0.0, 0.0]
    # 1/2 and phi(0) are float64 products of rounded constants (<= 4 u64), then cast once (u of the dtype).
    tol = 4 * U64 + (unit_roundoff(dtype) if dtype != torch.float64 else 0.0)
    bad = has_nan(g) or any(not math.isfinite(v) or abs(v - w) > tol * abs(w) for v, w in zip(g, want))
    return math.inf if bad else 0.0


register(
    Check(
        claim="RELU-3",
        subject="relu_moments",
        strategy=_any_finite,
        run=_relu_sigma_zero,
        metric="inf unless (mean, var) = (relu(mu), 0) exactly and the gradients are the finite limits",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [0.0, -0.0, 1.0, -1.0, float(torch.finfo(dtype).max), -float(torch.finfo(dtype).tiny)],
    )
)


# ---- RELU-5: closed-form gradients ------------------------------------------------------------------


def relu_grad_tol(a: float, dtype: torch.dtype) -> float:
    """RELU-5: (420 + 7 a^2) u64, plus one rounding to the dtype. phi, Phi, Q are within (1.5 a^2 + 8) u64
    (exp of a rounded a^2/2, erfcx, conditioning a^2 + 2 to the rounding of a), the forward mean within
    (1.5 a^2 + 21) u64 (tail) or 180 u64 (direct), and dvar/dsigma = 2(sigma Phi - mean phi) cancels by at
    most 2.2 (gaussian_sympy.py::check_cancellation): 2.2 ((1.5 a^2 + 8) + (1.5 a^2 + 180)) + 4."""
    extra = unit_roundoff(dtype) if dtype != torch.float64 else 0.0
    return (420.0 + 7.0 * a * a) * U64 + extra


def _relu_grad(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    mu, s = _relu_inputs(case, dtype)
    m_t = torch.tensor([mu], dtype=dtype, device=device, requires_grad=True)
    s_t = torch.tensor([s], dtype=dtype, device=device, requires_grad=True)
    mean, var = relu_moments(m_t, s_t)
    got: list[float] = []
    for out in (mean, var):
        gm, gs = torch.autograd.grad(out.sum(), (m_t, s_t), retain_graph=True)
        got += [float(gm.double()), float(gs.double())]
    want = relu_grads_ref(mu, s)
    a = mu / s
    if has_nan(got, want):
        return math.inf
    margins: list[float] = []
    for g, w in zip(got, want):
        if not math.isfinite(g):
            return math.inf
        if w > float(torch.finfo(dtype).max):
            continue
        small = _below_normal(g, w, dtype)  # every partial is >= 0 (RELU-5): the sign is checked too
        margins.append(small if small is not None else ratio(rel_err(g, w), relu_grad_tol(a, dtype)))
    return fold(margins)


def _relu_grad_examples(dtype: torch.dtype) -> Sequence[Any]:
    lo, hi = _SIGMA_RANGE[dtype]
    # the branch switch, the clamp of |a| at 40 and past it, |a| = 1e3, and sigma at the ends of the dtype's range
    # (-4.49909.., 4.48168..): a just inside the direct branch, where the float32 kernel's phi needs both parts of
    # ln 2 in its Cody-Waite reduction (without the low part the partials miss the bound by 4%)
    return [(-10.0, 1.0), (-40.0, 1.0), (0.0, 1.0), (-X_SPLIT, 1.0), (3.0, 2.0), (40.0, 1.0), (41.0, hi),
            (-45.0, hi), (-1e3, 1.0), (1e3, 1.0), (1e3, hi), (-2.0, lo), (2.0, lo), (60.0, lo),
            (-4.499090110839569, 4.4816890703380645)]


register(
    Check(
        claim="RELU-5",
        subject="relu_moments",
        # RELU-5 assumes only sigma >= 0 (sigma = 0 is RELU-3's): a over every order of magnitude up to 1e3 (and
        # [0, 60] densely), sigma over the dtype's range (RELU-4's), as for the forward.
        strategy=_relu_cases,
        run=_relu_grad,
        metric="max rel err of the 4 partials / ((420 + 7 a^2) u64 + u)",
        dtypes=DEFAULT_DTYPES,
        examples=_relu_grad_examples,
    )
)


# ---- CRELU-1: reflection ----------------------------------------------------------------------------


def _crelu(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    mu, s = _relu_inputs(case, dtype)
    m_t = torch.tensor([[mu, -mu]], dtype=dtype, device=device)
    s_t = torch.tensor([[s, s]], dtype=dtype, device=device)
    cm, cv = crelu_moments(m_t, s_t)
    pm, pv = relu_moments(m_t, s_t)
    nm, nv = neg_relu_moments(m_t, s_t)
    if has_nan(cm, cv, pm, pv, nm, nv):
        return math.inf
    same = torch.equal(cm, torch.cat([pm, nm], -1)) and torch.equal(cv, torch.cat([pv, nv], -1))
    if cm.shape != (1, 4) or not same:
        return math.inf
    # relu(x) - relu(-x) = x and relu(x) relu(-x) = 0: E+ - E- = mu, Var+ and Var- from the same Var(X).
    mp_, mn_ = float(pm[0, 0].double()), float(nm[0, 0].double())
    if not torch.equal(nm[0, 0], pm[0, 1]) or not torch.equal(nv[0, 0], pv[0, 1]):
        return math.inf
    # |E+ - E- - mu| <= tol (E+ + E-): each of E+/E- is within relu_tol relative (RELU-4), plus 2 roundings.
    scale = mp_ + mn_
    low = min(mp_, mn_)
    if scale == 0 or scale > float(torch.finfo(dtype).max) or (low < smallest_normal(dtype) and low != 0):
        return 0.0
    err = abs((mp_ - mn_) - mu)
    return ratio(err, (relu_tol(dtype) + 2 * unit_roundoff(dtype)) * scale + smallest_normal(dtype))


register(
    Check(
        claim="CRELU-1",
        subject="crelu_moments",
        strategy=_relu_cases,
        run=_crelu,
        metric="|E+ - E- - mu| / (tol (E+ + E-)), inf if neg/crelu differ from relu(-mu)",
        dtypes=ALL_DTYPES,
        examples=lambda dtype: [(-10.0, 1.0), (-40.0, 1.0), (0.0, 1.0), (2.0, 1.0)],
    )
)


# ---- KL-1 ---------------------------------------------------------------------------------------------

_PSI_ERR: dict[torch.dtype, float] = {torch.float64: 1e-13, torch.float32: 2e-6}


def kl_tol(dtype: torch.dtype) -> float:
    """KL-1: 24 u_c + 3 eps_psi in the compute dtype (psi's PSI-3 bound eps_psi), plus a final rounding."""
    cd = compute_dtype(dtype)
    extra = unit_roundoff(dtype) if cd != dtype else 0.0
    return 24.0 * unit_roundoff(cd) + 3.0 * _PSI_ERR[cd] + extra


def _kl_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    """A case is (mu_q, sigma_q, d, sigma_p) with mu_p = mu_q + d sigma_p. sigma_p over the dtype's whole range;
    sigma_q either a ratio r = sigma_q/sigma_p of [1e-3, 1e3] or near 1, or independent of sigma_p over the whole
    range, so that r reaches KL-1's ends: ratios that underflow (KL-1 has no lower limit) and r up to M^(1/2)/2."""
    fi = torch.finfo(dtype)
    lo, hi = float(fi.tiny), float(fi.max) / 64
    mus = st.floats(-10.0, 10.0)
    ds = st.one_of(mus, st.just(0.0))
    sps = log_uniform(lo, hi)
    near = st.tuples(mus, st.one_of(log_uniform(1e-3, 1e3), st.floats(0.999, 1.001), st.just(1.0)), ds, sps).map(
        lambda c: (c[0], c[1] * c[3], c[2], c[3]))
    apart = st.tuples(mus, log_uniform(lo, hi), ds, sps)
    return st.one_of(near, apart)


def _kl_inputs(case: Any, dtype: torch.dtype) -> tuple[float, float, float, float]:
    mq, sq, dm, sp_ = (float(v) for v in case)
    sp_ = round_to(sp_, dtype)
    sq = round_to(sq, dtype)
    mq = round_to(mq, dtype)
    mp_ = round_to(mq + dm * sp_, dtype) if dm != 0.0 else mq
    return mq, sq, mp_, sp_


def _in_kl_domain(vals: tuple[float, float, float, float], dtype: torch.dtype) -> bool:
    """KL-1's assumptions: finite arguments, sigma_p > 0, sigma_q >= 0, r <= M^(1/2)/2 and |d| <= M^(1/2)/2 (M of
    the compute dtype), r = 0 and underflowing ratios included."""
    mq, sq, mp_, sp_ = vals
    if not all(math.isfinite(v) for v in vals) or not (sp_ > 0 and sq >= 0):
        return False
    _, r_hi = kl_ratio_range(dtype)
    with mpmath.workdps(30):
        r = mpmath.mpf(sq) / mpmath.mpf(sp_)
        d = abs(mpmath.mpf(mq) - mpmath.mpf(mp_)) / mpmath.mpf(sp_)
    return bool(r <= r_hi and d <= kl_mean_range(dtype))


def _kl_accuracy(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    vals = _kl_inputs(case, dtype)
    if not _in_kl_domain(vals, dtype):
        return 0.0  # outside KL-1's assumptions
    ts = [torch.tensor([v], dtype=dtype, device=device) for v in vals]
    got = float(kl_normal(ts[0], ts[1], ts[2], ts[3]).double())
    want = kl_ref(*vals)
    if has_nan(got, want) or got < 0:
        return math.inf
    if want == 0:
        return 0.0 if got == 0.0 else math.inf  # exactly 0 when the distributions are equal
    if want > float(torch.finfo(dtype).max):
        return 0.0 if got >= float(torch.finfo(dtype).max) else math.inf  # overflows the dtype
    small = _below_normal(got, want, dtype)
    return small if small is not None else ratio(rel_err(got, want), kl_tol(dtype))


def _kl_examples(dtype: torch.dtype) -> Sequence[Any]:
    out: list[Any] = [(0.5, 1.0, 0.0, 1.0), (0.0, 2.0000002, 0.0, 2.0), (0.0, 1.0, 1.0, 1.0), (0.0, 1e-3, 0.0, 1.0),
                      (0.0, 1e3, 0.0, 1.0)]
    # Ratios that underflow: ln r from log sq - log sp (KL-1). float64: KL(0, 1e-300 || 0, 1e300) = 1381.05...
    if dtype == torch.float64:
        out += [(0.0, 1e-300, 0.0, 1e300), (0.0, 5e-324, 0.0, 1.0), (1.0, 1e-200, 0.0, 1e200)]
    else:
        fi = torch.finfo(dtype)
        out += [(0.0, float(fi.tiny), 0.0, float(fi.max) / 64), (0.0, float(fi.tiny) * 4, 0.0, 1.0)]
    return out


register(
    Check(
        claim="KL-1",
        subject="kl_normal",
        strategy=_kl_cases,
        run=_kl_accuracy,
        metric="rel err / (24 u + 3 eps_psi), inf if negative or nonzero at equality",
        dtypes=ALL_DTYPES,
        examples=_kl_examples,
    )
)


# ---- RELU-6 and EXP-1: the fused float32 CPU kernel (rln_verified/_native/gauss.c) ---------------------------

_F32 = torch.float32
_TINY32 = float(torch.finfo(torch.float32).tiny)


def fused_kernel_ready(claim: str, device: torch.device) -> None:
    """Raise :class:`NotApplicable` unless the fused float32 CPU kernel of ``_native/gauss.py`` serves ``device``."""
    from rln_verified._native import gauss

    if device.type != "cpu":
        raise NotApplicable(f"{claim} is the fused CPU kernel's claim; float32 on {device.type} runs the operator's "
                            "eager kernel, which RELU-2..5 and C6 cover")
    if not gauss.available():
        why = "switched off (disabled())" if gauss.library() is not None else gauss.reason()
        raise NotApplicable(f"the fused float32 kernel is not in use here: {why}")


def f32_ulps(got: float, want: float | mpmath.mpf) -> float:
    """``|got - want|`` in units of float32's spacing at ``max(|got|, |want|)`` (2^-149 below tiny); 0 when they are
    equal (infinities included), inf when either is NaN or only one is infinite."""
    if has_nan(got, want):
        return math.inf
    w = mpmath.mpf(want)
    if w == got:
        return 0.0
    if math.isinf(got) or mpmath.isinf(w):
        return math.inf
    mag = max(abs(mpmath.mpf(got)), abs(w))
    spacing = mpmath.ldexp(1, math.frexp(float(mag))[1] - 24) if mag >= _TINY32 else mpmath.ldexp(1, -149)
    return float(abs(mpmath.mpf(got) - w) / spacing)


def _relu_values_and_partials(mu: float, s: float, device: torch.device) -> list[float]:
    """(mean, var, dmean/dmu, dmean/dsigma, dvar/dmu, dvar/dsigma) of ``relu_moments`` (looked up per call, so
    that a test can replace it) on one float32 element."""
    m_t = torch.tensor([mu], dtype=_F32, device=device, requires_grad=True)
    s_t = torch.tensor([s], dtype=_F32, device=device, requires_grad=True)
    mean, var = relu_moments(m_t, s_t)
    out = [float(mean.detach().double()), float(var.detach().double())]
    for t in (mean, var):
        gm, gs = torch.autograd.grad(t.sum(), (m_t, s_t), retain_graph=True)
        out += [float(gm.double()), float(gs.double())]
    return out


def _accuracy_margin(got: Sequence[float], want: Sequence[mpmath.mpf], tols: Sequence[float]) -> float:
    """RELU-4/RELU-5's float32 accuracy of each value where its true value is a normal float32 (sign and size
    below, as ``_below_normal``; skipped where the true value overflows float32)."""
    margins: list[float] = []
    for g, w, tol in zip(got, want, tols, strict=True):
        if has_nan(g, w) or g < 0:
            return math.inf  # every moment and partial of RELU-2/RELU-5 is >= 0
        if w > float(torch.finfo(_F32).max):
            continue
        small = _below_normal(g, w, _F32)
        margins.append(small if small is not None else ratio(rel_err(g, w), tol))
    return fold(margins)


def _relu_fused(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    """RELU-6 (2) and (3) on one element: the fused kernel's moments and four partials are within 1 float32 ulp of
    the eager kernel's, and (for |a| <= 1e3, RELU-4's assumption) within RELU-4's float32 bound at a (moments) and
    RELU-5's (420 + 7 a^2) u64 + u32 (partials) of the 90-digit references. NaN anywhere is a violation: every input
    drawn is finite with sigma >= 0, where RELU-2 and RELU-5 promise finite values."""
    from rln_verified._native import gauss

    fused_kernel_ready("RELU-6", device)
    mu, s = (round_to(float(v), _F32) for v in case)
    probe = torch.tensor([mu, s], dtype=_F32, device=device)
    if not gauss.usable(probe[:1], probe[1:]):
        raise NotApplicable(f"the fused float32 kernel does not serve these tensors here: {gauss.reason()}")
    fused = _relu_values_and_partials(mu, s, device)
    with gauss.disabled():
        eager = _relu_values_and_partials(mu, s, device)
    if has_nan(fused, eager):
        return math.inf
    ulp_margin = fold([f32_ulps(f, e) for f, e in zip(fused, eager, strict=True)])  # (3): <= 1 ulp
    if s == 0 or abs(mu / s) > 1e3:
        return ulp_margin  # outside RELU-4's |a| <= 1e3 (sigma = 0 is RELU-3's, where (3) pins both kernels)
    a = mu / s
    want_m = relu_moments_ref(mu, s)
    want_g = relu_grads_ref(mu, s)
    tols = [relu_tol_at(a, _F32)] * 2 + [relu_grad_tol(a, _F32)] * 4
    return fold(ulp_margin, _accuracy_margin(fused, [*want_m, *want_g], tols))


def _relu_fused_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    # (a, sigma) over RELU-4's range and float32's sigmas, as (mu, sigma); and any finite float32 mu, sigma >= 0.
    ratio_cases = _relu_cases(_F32).map(lambda c: _relu_inputs(c, _F32))
    return st.one_of(ratio_cases, st.tuples(_any_finite(_F32), _any_finite(_F32, 0.0)))


def _relu_fused_examples(dtype: torch.dtype) -> Sequence[Any]:
    # Both sides of each branch switch of gauss.c: the tail at a = -4.5, the flush of phi below 2^-1022 (|a| > 37.5),
    # the clamp of |a| at 40; sigma at float32's ends; sigma = 0; a past RELU-4's 1e3.
    out: list[Any] = []
    for a in (-X_SPLIT, -37.5, -40.0, 37.5, 40.0, 0.0):
        t = torch.tensor(a, dtype=_F32)
        for v in (t, torch.nextafter(t, torch.tensor(math.inf)), torch.nextafter(t, torch.tensor(-math.inf))):
            out.append(_relu_inputs((float(v), 1.0), _F32))
    out += [(-19.0, 1.0), (-60.0, 1.0), (1e-30 * 3.0, 1e-30), (-3e30, 1e30), (1.0, 0.0), (-1.0, 0.0),
            (1e38, 1e-38), (-1e38, 1e-38), (float(torch.finfo(_F32).max), 1.0), (2.0, 1e30)]
    return out


register(
    Check(
        claim="RELU-6",
        subject="relu_moments",
        strategy=_relu_fused_cases,
        run=_relu_fused,
        metric="max of (ulps from the eager kernel over moments and partials) and (rel err / RELU-4, RELU-5 float32 "
               "bounds at a, for |a| <= 1e3)",
        dtypes=(torch.float32,),
        examples=_relu_fused_examples,
    )
)


# EXP-1's range: C6's std bounds as logs, rounded to float32 as torch.clamp rounds them for a float32 tensor.
def exp1_range() -> tuple[float, float]:
    from rln_verified._bayesian_std import std_bounds

    lo, hi = std_bounds(_F32)
    return round_to(math.log(lo), _F32), round_to(math.log(hi), _F32)


# EXP-1's bound: 0.99 ulp of float32 at e^x (the kernel's measured worst is 0.9801, proofs/gaussian.md).
_EXP1_ULPS = 0.99
# Every 257th float32 of the range in dev and ci (0.16 s); every one under the thorough profile (about 40 s).
EXP1_STRIDE = 257


def _f32_order(x: float) -> int:
    """The position of float32 ``x`` on the number line of float32 values (0 and -0 both at 0)."""
    bits = int(torch.tensor([abs(x)], dtype=_F32).view(torch.int32).item())
    return bits if x >= 0 else -bits


def _exp1_sweep(device: torch.device, dtype: torch.dtype, exhaustive: bool) -> tuple[float, Any, str]:
    from rln_verified._native import gauss

    fused_kernel_ready("EXP-1", device)
    lo, hi = exp1_range()
    stride = 1 if exhaustive else EXP1_STRIDE
    worst, where = gauss.exp_max_ulp(lo, hi, stride)
    n = _f32_order(hi) - _f32_order(lo) + 1
    covered = (f"every float32 in [{lo}, {hi}] ({n:,} values)" if stride == 1 else
               f"every {stride}th float32 of [{lo}, {hi}] ({(n - 1) // stride + 2:,} of {n:,} values, both ends; "
               "every one under --profile thorough)")
    return ratio(worst, _EXP1_ULPS), [where], covered


def _exp1(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    """EXP-1 through a float32 layer on the CPU: std() = E(clamp(rho, lo, hi)) within 0.99 ulp of e^clamp (mpmath at
    30 digits), var() = std()**2 bit for bit, and the rho gradients sigma and 2 sigma^2 (bit for bit: the backward
    multiplies by sigma, and by 2, exactly) inside [lo, hi] and 0 outside."""
    from rln_verified._bayesian_linear import BBBLinear
    from rln_verified._native import gauss

    fused_kernel_ready("EXP-1", device)
    vals = [round_to(float(v), _F32) for v in case]
    layer = BBBLinear(len(vals), 1, bias=False, device=device, dtype=_F32)
    rho = layer.weight_rho
    assert rho is not None
    with torch.no_grad():
        rho.copy_(torch.tensor([vals], dtype=_F32))
    if not gauss.usable(rho):
        raise NotApplicable(f"the fused float32 kernel does not serve this layer here: {gauss.reason()}")
    ws, _ = layer.std()
    wv, _ = layer.var()
    (g_s,) = torch.autograd.grad(ws.sum(), rho)
    (g_v,) = torch.autograd.grad(wv.sum(), rho)
    if has_nan(ws, wv, g_s, g_v):
        return math.inf  # rho is finite: sigma, its square and the gradients are finite (C6)
    sd, sq = ws.detach(), wv.detach()
    if not torch.equal(sq, sd * sd):
        return math.inf
    lo, hi = exp1_range()
    inside = torch.tensor([[lo <= v <= hi for v in vals]])
    zero = torch.zeros_like(sd)
    if not (torch.equal(g_s, torch.where(inside, sd, zero)) and torch.equal(g_v, torch.where(inside, 2 * sq, zero))):
        return math.inf
    margins = []
    with mpmath.workdps(30):
        for got, v in zip(sd.reshape(-1).tolist(), vals, strict=True):
            margins.append(f32_ulps(got, mpmath.exp(mpmath.mpf(min(max(v, lo), hi)))) / _EXP1_ULPS)
    return guarded(fold(margins), sd, sq)


def _exp1_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    lo, hi = exp1_range()
    near = st.floats(lo - 1.0, hi + 1.0, width=32)
    return st.lists(st.one_of(near, finite_floats(_F32)), min_size=1, max_size=8)


def _exp1_examples(dtype: torch.dtype) -> Sequence[Any]:
    lo, hi = exp1_range()
    fmax = float(torch.finfo(_F32).max)
    t_lo, t_hi = torch.tensor(lo, dtype=_F32), torch.tensor(hi, dtype=_F32)
    edges = [float(torch.nextafter(t_lo, torch.tensor(-math.inf))),
             float(torch.nextafter(t_hi, torch.tensor(math.inf)))]
    # the ends and just outside, 0 and -0, the default rho's neighbourhood, the measured worst point, saturation
    return [[lo, hi, 0.0, -0.0, round_to(math.log(0.01), _F32), -5.8573437], edges, [-1e30, 1e30, -30.0, 12.0],
            [fmax, -fmax]]


register(
    Check(
        claim="EXP-1",
        subject="BayesianLinear.std",
        strategy=_exp1_cases,
        run=_exp1,
        metric="ulps of std() from e^clamp(rho) / 0.99 (and over the sweep of the range); inf unless var = std^2 and "
               "the rho gradients are clamp's, bit for bit",
        dtypes=(torch.float32,),
        examples=_exp1_examples,
        sweep=_exp1_sweep,
    )
)


__all__ = [
    "EXP1_STRIDE",
    "exp1_range",
    "f32_ulps",
    "fused_kernel_ready",
    "gauss_tol",
    "kl_ref",
    "kl_tol",
    "logcdf_ref",
    "relu_grad_tol",
    "relu_grads_ref",
    "relu_moments_ref",
    "relu_tol",
]


# ---- KL-1: deterministic sweep over every order of magnitude ----------------------------------------------


def kl_ratio_range(dtype: torch.dtype) -> tuple[float, float]:
    """KL-1's range of r = sigma_q/sigma_p: (0, M^(1/2)/2], M the compute dtype's largest float, so that
    t = r^2 - 1 and d^2 + g stay finite (float64 up to 6.7e153, float32 up to 9.2e18). Below 1/2 the kernel uses
    g = r^2 - 1 - 2 ln r with ln r from logs of the sigmas where r underflows, so there is no lower limit
    (r = 0 gives KL = inf, the true value)."""
    m = float(torch.finfo(compute_dtype(dtype)).max)
    return 0.0, math.sqrt(m) / 2.0


def kl_mean_range(dtype: torch.dtype) -> float:
    """KL-1's bound on |d| = |mu_q - mu_p|/sigma_p: M^(1/2)/2, so that d^2 + g(r) is finite."""
    return math.sqrt(float(torch.finfo(compute_dtype(dtype)).max)) / 2.0


# torch.distributions' Normal-Normal KL is 0.5 (v + d^2 - 1 - log v) with v = fl(fl(sq/sp)^2), all in the
# input dtype d (u = u_d). v carries (1+u)^3 - 1 <= 3.01u and d^2 (1+u)^5 - 1 <= 5.01u relative; log v is off
# by <= 3.02u from v's error plus its own ulp, 2.01u |log v|; the three additions add u each of a partial sum
# <= S = v + d^2 + 1 + |log v| (3.03u S with the compounding). Each of the first four terms is <= 5.01u times its
# own part of S, so the total is <= (5.01 + 3.03) u S, halved: 4.02 u S <= 4.05 u S. This holds where v and d^2
# are normal floats (a subnormal v would make log v's relative error unbounded) and the result is finite.
_TORCH_KL_UNITS = 4.05
