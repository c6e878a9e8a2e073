"""Deterministic reference sweeps of PSI-3, SP-1, SP-2 and KL-1, and N3's constant-group ratio: helpers of the
tests only (tests/test_special.py, tests/test_gaussian.py, tests/test_norm.py), built on rln_verified.verify."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mpmath
import torch
from torch.distributions import Normal, kl_divergence

from rln_verified._gaussian import kl_normal
from rln_verified._special import PSI_SPLIT, SOFTPLUS_THRESHOLD, inv_softplus, psi, softplus
from rln_verified._validation import compute_dtype
from rln_verified.verify._core import eps, smallest_normal
from rln_verified.verify._margins import has_nan
from rln_verified.verify._subjects import LayerSubject
from rln_verified.verify.gaussian import _TORCH_KL_UNITS, kl_mean_range, kl_ratio_range, kl_ref, kl_tol
from rln_verified.verify.norm import _affine, _module
from rln_verified.verify.special import (
    _PSI_RANGE,
    K_INV,
    _max,
    _psi_tol,
    _sp_tol,
    _units,
    inv_softplus_error_bound,
    neighbours,
    on_grid,
    psi_ref,
    round_trip_y_bound,
    softplus_ref,
)

# ---- SP-2 at every float of a dtype (verify/special.py) ---------------------------------------------------


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


# ---- deterministic reference sweeps (scipy's _mptestutils style; verify/special.py) ------------------------


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
    t0, _ = PSI_SPLIT[cd]
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
    big_t = SOFTPLUS_THRESHOLD[cd]
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


# ---- KL-1: deterministic sweep over every order of magnitude (verify/gaussian.py) --------------------------


def _kl_points(dtype: torch.dtype) -> list[tuple[float, float, float, float]]:
    """(mu_q, sigma_q, mu_p, sigma_p) in ``dtype``: r over every order of magnitude of KL-1's range, both sides of
    r = 1 down to one ulp; d = (mu_q - mu_p)/sigma_p over every order of magnitude; sigma_p over the dtype."""
    fi = torch.finfo(dtype)
    r_lo, r_hi = kl_ratio_range(dtype)
    r_lo, r_hi = max(r_lo, 2 * float(fi.tiny)), min(r_hi, float(fi.max) / 2)
    u = eps(dtype) / 2
    near_one = [1.0 + s * 10.0**-k for k in range(1, 17) for s in (-1.0, 1.0) if 10.0**-k >= u]
    ratios = on_grid([*decades(r_lo, r_hi, 2), *near_one, *neighbours(1.0, dtype)], dtype)
    d_max = min(kl_mean_range(dtype), math.sqrt(float(fi.max)) / 4)
    ds = on_grid([*decades(max(1e-20, float(fi.tiny)), d_max, 1)], dtype)
    scales = on_grid(decades(math.sqrt(float(fi.tiny)), math.sqrt(float(fi.max)), 0.2), dtype)
    cases: list[tuple[float, float, float, float]] = []
    for r in ratios:  # sigma_p = 1; mu_q - mu_p = 0 and 1
        cases += [(0.0, r, 0.0, 1.0), (1.0, r, 0.0, 1.0)]
    for d in ds:
        for r in (0.5, 1.0, 3.0):
            cases += [(d, r, 0.0, 1.0), (-d, r, 0.25, 1.0)]
    for sp_ in scales:  # scale invariance exercised at the ends of the dtype: intermediates must not overflow
        for r, d in ((1.0, 0.0), (1.0, 1e-3), (2.0, 1.5), (0.3, -2.0)):
            cases.append((d * sp_, r * sp_, 0.0, sp_))
    out = []
    for case in cases:
        vals = tuple(float(torch.tensor(v, dtype=torch.float64).to(dtype).double()) for v in case)
        if all(math.isfinite(v) for v in vals) and vals[1] >= float(fi.tiny) and vals[3] >= float(fi.tiny):
            out.append((vals[0], vals[1], vals[2], vals[3]))
    return sorted(set(out))


def kl_sweep(device: str | torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """kl_normal against the mpmath reference (kl_ref, 100 working digits) within KL-1's kl_tol, exactly 0 at
    equality, >= 0 everywhere; and against torch.distributions.kl_divergence within kl_tol KL + 4.05 u_d S
    wherever torch's own bound applies. Returns (mpmath sweep, torch sweep), each with its worst errors."""
    pts = _kl_points(dtype)
    cols = [torch.tensor([p[i] for p in pts], dtype=dtype, device=device) for i in range(4)]
    ours = kl_normal(cols[0], cols[1], cols[2], cols[3]).double().cpu().tolist()
    theirs = kl_divergence(Normal(cols[0], cols[1]), Normal(cols[2], cols[3])).double().cpu().tolist()
    fi = torch.finfo(dtype)
    tiny, top, u, tol = float(fi.tiny), float(fi.max), eps(dtype) / 2, kl_tol(dtype)
    name = f"{str(dtype).removeprefix('torch.')} [{device}]"
    ref_sw = Sweep(f"kl_normal vs mpmath {name}, args (mu_q, sigma_q, mu_p, sigma_p), rel tol {tol:.3g}")
    torch_sw = Sweep(f"kl_normal vs torch.distributions {name}, allowed kl_tol KL + 4.05 u S")
    for p, got, tv in zip(pts, ours, theirs):
        want = kl_ref(*p)
        if math.isnan(got) or got < 0:
            ref_sw.fail(p, f"kl = {got!r}: negative or NaN")
            continue
        if want > top:
            ref_sw.check(p, got == math.inf or got >= top, f"kl = {got!r}, true value {float(want):.5g} overflows")
            continue
        if want < tiny:
            ref_sw.check(p, got <= tiny, f"kl = {got!r} above the normal range, true value {float(want):.5g}")
            continue
        ref_sw.add(p, got, want, tol * float(want))  # want == 0 (equal arguments) allows only 0
        v = (p[1] / p[3]) ** 2
        d2 = ((p[0] - p[2]) / p[3]) ** 2
        if math.isfinite(tv) and tiny <= v <= top and (d2 == 0 or tiny <= d2 <= top) and tv >= tiny:
            s_sum = v + d2 + 1.0 + abs(math.log(v))
            torch_sw.add(p, got, mpmath.mpf(tv), tol * float(want) + _TORCH_KL_UNITS * u * s_sum)
    return ref_sw, torch_sw


# ---- N3: the ratio a constant group attains (verify/norm.py) ----------------------------------------------


def n3_constant_group_ratio(subject: LayerSubject, device: torch.device, dtype: torch.dtype) -> float:
    """The exact ||dy/dx||_2 sqrt(v + eps) / max|gamma| of a constant group, the best over the groups of the
    checked module: there v = 0, r = 0, f = 1 and dy/dx = diag(gamma) P / sqrt(eps) (N3), so the ratio is
    ||diag(gamma) P||_2 / max|gamma|, exactly 1 for a per-channel gamma. The pinned constant example attains it,
    so the tightness N3 reports is at least this / (K slack^2)."""
    mod = _module(subject, device, dtype)
    x = torch.zeros(subject.shape, dtype=dtype, device=device)
    gw, _ = _affine(mod, x, subject)
    m = gw.shape[-1]
    proj = torch.eye(m, dtype=torch.float64) - 1.0 / m
    return max(float(torch.linalg.matrix_norm(torch.diag(row) @ proj, ord=2)) / float(row.abs().max())
               for row in gw.cpu())
