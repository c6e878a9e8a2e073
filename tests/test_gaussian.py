"""Tests of GAUSS-*, RELU-*, CRELU-* and KL-* (proofs/gaussian.md). The property checks live in
rln_verified/verify/gaussian.py; the tests here are thin, plus errors, gradcheck and regressions."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from _sweeps import kl_sweep
from hypothesis import example, given, settings, target
from hypothesis import strategies as st

from rln_verified._validation import compute_dtype
from rln_verified.functional import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_logcdf,
    normal_pdf,
    relu_moments,
)
from rln_verified.verify._core import ALL_DTYPES, assert_check
from rln_verified.verify.gaussian import (
    _TORCH_KL_UNITS,
    kl_ref,
    kl_tol,
    relu_moments_ref,
    relu_tol,
)

DTYPES = [torch.float64, torch.float32]


@pytest.mark.claim("GAUSS-1")
@pytest.mark.parametrize("subject", ["normal_pdf", "normal_cdf", "normal_logcdf"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gauss_accuracy(subject: str, device: str, dtype: torch.dtype) -> None:
    assert_check("GAUSS-1", subject, device, dtype)


@pytest.mark.claim("RELU-1")
def test_relu_identities_property(device: str) -> None:
    """Hypothesis over a = mu/sigma in [-1e3, 1e3] (and sigma): every RELU-1 identity, with Hh_n from the
    parabolic cylinder function, holds to 1e-40 in mpmath; target() on the discrepancy."""
    assert_check("RELU-1", "relu_moments", device, torch.float64)


@pytest.mark.claim("RELU-4")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_relu_accuracy(device: str, dtype: torch.dtype) -> None:
    assert_check("RELU-4", "relu_moments", device, dtype)


@pytest.mark.claim("RELU-2")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_relu_nonnegative(device: str, dtype: torch.dtype) -> None:
    assert_check("RELU-2", "relu_moments", device, dtype)


@pytest.mark.claim("RELU-3")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_relu_sigma_zero(device: str, dtype: torch.dtype) -> None:
    assert_check("RELU-3", "relu_moments", device, dtype)


@pytest.mark.claim("RELU-5")
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradients(device: str, dtype: torch.dtype) -> None:
    assert_check("RELU-5", "relu_moments", device, dtype)


@pytest.mark.claim("CRELU-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_crelu_reflection(device: str, dtype: torch.dtype) -> None:
    assert_check("CRELU-1", "crelu_moments", device, dtype)


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_accuracy(device: str, dtype: torch.dtype) -> None:
    assert_check("KL-1", "kl_normal", device, dtype)


# ---- regressions and cross-checks ------------------------------------------------------------------


def _textbook_float32(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    mean = a * cdf + pdf
    return mean, (a * a + 1) * cdf + a * pdf - mean * mean


@pytest.mark.claim("RELU-2", "RELU-4")
def test_textbook_failure_grid(device: str) -> None:
    """The 601-point float32 grid a in [-60, 0]: the textbook formula goes negative there;
    ours is >= 0 everywhere and within 1e-5 wherever the true value is a normal float32."""
    a = torch.linspace(-60.0, 0.0, 601, dtype=torch.float32, device=device)
    tm, tv = _textbook_float32(a)
    assert int((tv < 0).sum()) > 0 or int((tm < 0).sum()) > 0, "grid no longer exhibits the textbook failure"
    mean, var = relu_moments(a, torch.ones_like(a))
    assert bool((mean >= 0).all()) and bool((var >= 0).all())
    tiny = float(torch.finfo(torch.float32).tiny)
    worst = 0.0
    for av, m, v in zip(a.double().cpu().tolist(), mean.double().cpu().tolist(), var.double().cpu().tolist()):
        rm, rv = relu_moments_ref(av, 1.0)
        for got, want in ((m, rm), (v, rv)):
            if want >= tiny:
                worst = max(worst, float(abs((got - want) / want)))
            else:
                assert 0.0 <= got <= tiny
    assert worst <= relu_tol(torch.float32), f"worst rel err {worst:.3g} on the textbook grid"


@pytest.mark.claim("RELU-4")
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_mpmath_sweep(device: str, dtype: torch.dtype) -> None:
    """scipy-style sweep over every order of magnitude of a = mu/sigma and of sigma."""
    mags = [0.0] + [10.0**k for k in range(-12, 4)] + [2.0, 4.4, 4.5, 4.6, 5.0, 20.0, 37.0]
    ratios = sorted({s * m for m in mags for s in (-1.0, 1.0)})
    sigmas = [1e-20, 1e-3, 1.0, 7.0, 1e5, 1e20]
    tol = relu_tol(dtype)
    tiny = float(torch.finfo(dtype).tiny)
    mus, sgs = [], []
    for s in sigmas:
        for r in ratios:
            sv = float(torch.tensor(s, dtype=dtype).double())
            mus.append(float(torch.tensor(r * sv, dtype=dtype).double()))
            sgs.append(sv)
    mean, var = relu_moments(torch.tensor(mus, dtype=dtype, device=device),
                             torch.tensor(sgs, dtype=dtype, device=device))
    worst, where = 0.0, None
    for mv, sv, g1, g2 in zip(mus, sgs, mean.double().cpu().tolist(), var.double().cpu().tolist()):
        for got, want in zip((g1, g2), relu_moments_ref(mv, sv)):
            assert got >= 0
            if tiny <= want <= float(torch.finfo(dtype).max):
                e = float(abs((got - want) / want))
                if e > worst:
                    worst, where = e, (mv, sv)
    assert worst <= tol, f"worst rel err {worst:.3g} at (mu, sigma) = {where}"


@pytest.mark.claim("RELU-1")
def test_relu_matches_scipy_truncnorm() -> None:
    """Cross-check with scipy: E relu = P m_t, Var relu = P v_t + P(1-P) m_t^2 from truncnorm's moments.
    scipy's own error (measured against mpmath in the loop) plus our 1e-12 bounds the difference."""
    from scipy import special, stats

    for a in (-20.0, -8.0, -4.6, -4.4, -2.0, -0.5, 0.0, 0.5, 2.0, 8.0, 30.0):
        p = float(special.ndtr(a))
        m_t, v_t = (float(v) for v in stats.truncnorm.stats(-a, np.inf, loc=a, scale=1.0, moments="mv"))
        sci = (p * m_t, p * v_t + p * (1 - p) * m_t**2)
        ours = relu_moments(torch.tensor([a], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
        for o, sv, ref in zip(ours, sci, relu_moments_ref(a, 1.0)):
            ov = float(o)
            sci_err = float(abs(sv - ref))
            assert abs(ov - sv) <= sci_err + 1e-12 * float(ref) + 1e-300, (a, ov, sv)


@pytest.mark.claim("RELU-1")
def test_relu_matches_quad() -> None:
    """E relu(X) and E relu(X)^2 by scipy quad of the density, at moderate a (an independent reference)."""
    from scipy import integrate, stats

    for mu, s in ((0.3, 1.0), (-1.5, 2.0), (2.0, 0.5), (-3.0, 1.0)):
        dist = stats.norm(mu, s)
        m1 = integrate.quad(lambda y, d=dist: y * d.pdf(y), 0, np.inf, epsabs=0, epsrel=1e-13)[0]
        m2 = integrate.quad(lambda y, d=dist: y * y * d.pdf(y), 0, np.inf, epsabs=0, epsrel=1e-13)[0]
        mean, var = relu_moments(torch.tensor([mu], dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
        # quad's relative accuracy ~1e-13; the variance m2 - m1^2 loses at most m2/var <= 40 of it here.
        assert abs(float(mean) - m1) <= 1e-11 * m1
        assert abs(float(var) - (m2 - m1 * m1)) <= 40 * 1e-11 * float(var)


@pytest.mark.claim("RELU-5")
def test_relu_gradcheck() -> None:
    mu = torch.tensor([-40.0, -10.0, -4.6, -4.5, -4.4, -1.0, 0.0, 0.7, 5.0, 39.0], dtype=torch.float64,
                      requires_grad=True)
    sigma = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 0.5, 1.0, 3.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relu_moments, (mu, sigma), eps=1e-7, atol=1e-9, rtol=1e-6)
    assert torch.autograd.gradgradcheck(lambda m, s: relu_moments(m, s)[0], (mu[3:8], sigma[3:8]), eps=1e-7,
                                        atol=1e-8, rtol=1e-5)


@pytest.mark.claim("RELU-5")
def test_relu_vmap_and_grad_through_cast() -> None:
    mu = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    vm, vv = torch.vmap(relu_moments)(mu, sigma)
    m, v = relu_moments(mu, sigma)
    assert torch.equal(vm, m) and torch.equal(vv, v)
    m32 = mu.float().requires_grad_()
    relu_moments(m32, sigma.float())[1].sum().backward()
    assert m32.grad is not None and m32.grad.dtype == torch.float32 and bool(torch.isfinite(m32.grad).all())


@pytest.mark.claim("RELU-2", "RELU-3")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_relu_nan_isolation(device: str, dtype: torch.dtype) -> None:
    mu = torch.tensor([1.0, math.nan, 0.5, -2.0, 3.0, -1.0], dtype=dtype, device=device, requires_grad=True)
    sigma = torch.tensor([1.0, 1.0, -1.0, math.nan, 0.0, 0.0], dtype=dtype, device=device, requires_grad=True)
    mean, var = relu_moments(mu, sigma)
    bad = torch.tensor([False, True, True, True, False, False], device=device)
    assert bool(torch.isnan(mean[bad]).all()) and bool(torch.isnan(var[bad]).all())
    assert bool(torch.isfinite(mean[~bad]).all()) and bool(torch.isfinite(var[~bad]).all())
    (mean.sum() + var.sum()).backward()
    assert mu.grad is not None and sigma.grad is not None
    assert bool(torch.isfinite(mu.grad[~bad]).all()) and bool(torch.isfinite(sigma.grad[~bad]).all())
    clean_m, clean_v = relu_moments(mu.detach()[~bad], sigma.detach()[~bad])
    assert torch.equal(clean_m, mean.detach()[~bad]) and torch.equal(clean_v, var.detach()[~bad])


def test_bad_input_types() -> None:
    f = torch.ones(2)
    with pytest.raises(TypeError, match="floating-point"):
        relu_moments(torch.ones(2, dtype=torch.int64), f)
    with pytest.raises(TypeError, match="one floating dtype"):
        relu_moments(f, f.double())
    with pytest.raises(ValueError, match="broadcast"):
        relu_moments(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="dimension"):
        crelu_moments(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point"):
        normal_pdf(torch.ones(2, dtype=torch.int32))
    with pytest.raises(TypeError, match="float"):
        normal_cdf(f, mu="0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        kl_normal(f, f, f, torch.ones(2, dtype=torch.int64))


@pytest.mark.claim("GAUSS-1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gauss_out_of_domain_and_nan(device: str, dtype: torch.dtype) -> None:
    x = torch.tensor([0.0, 1.0, math.nan, 2.0], dtype=dtype, device=device)
    sigma = torch.tensor([1.0, -1.0, 1.0, 0.0], dtype=dtype, device=device)
    for fn in (normal_pdf, normal_cdf, normal_logcdf):
        out = fn(x, 0.0, sigma)
        assert bool(torch.isfinite(out[0])) and bool(torch.isnan(out[1:]).all()), fn.__name__


@pytest.mark.claim("GAUSS-1")
def test_gauss_matches_scipy() -> None:
    from scipy import special

    z = np.concatenate([-np.logspace(-3, np.log10(37.0), 40), np.logspace(-3, np.log10(8.0), 20)])
    zt = torch.tensor(z, dtype=torch.float64)
    u = 2.0**-53
    # scipy's ndtr/log_ndtr are accurate to a few u here (8u allowed); (16 + 3 z^2) u is GAUSS-1's bound for ours.
    tol = (24 + 3 * z * z) * u
    np.testing.assert_array_less(np.abs(normal_cdf(zt).numpy() / special.ndtr(z) - 1), tol)
    np.testing.assert_array_less(np.abs(normal_logcdf(zt).numpy() / special.log_ndtr(z) - 1), tol)


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_matches_torch_distributions(dtype: torch.dtype) -> None:
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(3)
    mq, mp = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
    sq = torch.exp(2 * torch.randn(200, generator=g, dtype=torch.float64))
    sp = torch.exp(2 * torch.randn(200, generator=g, dtype=torch.float64))
    args = [t.to(dtype) for t in (mq, sq, mp, sp)]
    ours = kl_normal(*args).double()
    theirs = kl_divergence(Normal(args[0], args[1]), Normal(args[2], args[3])).double()
    # torch forms 0.5 (v + d^2 - 1 - log v), v = r^2: its rounding is <= 4.05 u S, S = v + d^2 + 1 + |log v|
    # (derived at verify/gaussian.py::_TORCH_KL_UNITS; v and d^2 are normal here: r in e^[-12, 12]).
    # Ours is within kl_tol of the true KL, which is <= ours / (1 - kl_tol).
    r2 = (args[1].double() / args[3].double()) ** 2
    d2 = ((args[0].double() - args[2].double()) / args[3].double()) ** 2
    u = torch.finfo(dtype).eps / 2
    tol = kl_tol(dtype)
    budget = _TORCH_KL_UNITS * u * (r2 + d2 + 1 + r2.log().abs()) + tol * ours / (1 - tol)
    assert bool(((ours - theirs).abs() <= budget).all())
    assert bool((ours >= 0).all())


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_mpmath_and_torch_sweep(device: str, dtype: torch.dtype) -> None:
    """scipy-style sweep: r = sigma_q/sigma_p over every order of magnitude of KL-1's range and down to one ulp
    either side of 1, d over every order of magnitude, sigma_p over the dtype; against mpmath (kl_tol) and
    torch.distributions (kl_tol KL + 4.05 u S). The messages name the worst errors and their arguments."""
    against_mpmath, against_torch = kl_sweep(device, dtype)
    assert against_mpmath.ok, against_mpmath.report()
    assert against_torch.ok, against_torch.report()
    assert against_torch.points > 0, "torch's error bound applied nowhere: the comparison would be vacuous"


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize(("dtype", "r"), [(torch.float64, 1e78), (torch.float64, 1e-156), (torch.float64, 1e-320),
                                          (torch.float64, 1e150), (torch.float32, 5e9), (torch.float32, 1e-20),
                                          (torch.float32, 1e-38), (torch.float32, 1e18)])
def test_kl_where_the_old_kernel_overflowed(dtype: torch.dtype, r: float) -> None:
    """Regression: kl_normal used to form t^2 = (r^2 - 1)^2 and s = 1/r^2 - 1, which overflow to inf for these
    ratios although KL is finite (~r^2/2 above, ~ -ln r below); KL-1 now covers them."""
    args = [torch.tensor([v], dtype=dtype) for v in (0.0, r, 0.0, 1.0)]
    want = float(kl_ref(0.0, float(args[1]), 0.0, 1.0))
    got = float(kl_normal(*args))
    assert math.isfinite(got) and abs(got - want) <= kl_tol(dtype) * want, (r, got, want)


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_where_the_ratio_underflows(dtype: torch.dtype) -> None:
    """KL-1 has no lower limit on r = sigma_q/sigma_p: where the quotient underflows, ln r comes from log sigma_q -
    log sigma_p. float64: KL(N(0, 1e-300^2) || N(0, 1e300^2)) = 0.5 (r^2 - 1) - ln r = 1381.05... (mpmath)."""
    fi = torch.finfo(dtype)
    sq, sp = (1e-300, 1e300) if dtype == torch.float64 else (float(fi.tiny), float(fi.max) / 64)
    args = [torch.tensor([v], dtype=dtype) for v in (0.0, sq, 0.0, sp)]
    want = kl_ref(*(float(a.double()) for a in args))
    if dtype == torch.float64:
        assert abs(float(want) - 1381.0511) < 1e-4  # the reference itself: -ln(1e-600) - 1/2
    got = float(kl_normal(*args).double())
    assert math.isfinite(got) and abs(got - float(want)) <= kl_tol(dtype) * float(want), (got, float(want))


@pytest.mark.claim("KL-1")
def test_kl_matches_quad() -> None:
    from scipy import integrate, stats

    for mq, sq, mp, sp in ((0.0, 1.0, 1.0, 2.0), (0.5, 0.3, -0.2, 1.0), (1.0, 2.5, 1.0, 1.0), (-2.0, 1.0, 2.0, 0.7)):
        q, p = stats.norm(mq, sq), stats.norm(mp, sp)
        lo, hi = mq - 40 * sq, mq + 40 * sq

        def integrand(y: float, q: Any = q, p: Any = p) -> float:
            return float(q.pdf(y) * (q.logpdf(y) - p.logpdf(y)))

        ref = integrate.quad(integrand, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0]
        got = float(kl_normal(*(torch.tensor([v], dtype=torch.float64) for v in (mq, sq, mp, sp))))
        assert abs(got - ref) <= 1e-10 * ref, (mq, sq, mp, sp, got, ref)
        assert abs(got - float(kl_ref(mq, sq, mp, sp))) <= kl_tol(torch.float64) * got


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_zero_iff_equal_and_domain(device: str, dtype: torch.dtype) -> None:
    m = torch.tensor([0.0, 3.0, -1e3, 1.5, 0.0, 0.0, 1.0], dtype=dtype, device=device)
    s = torch.tensor([1.0, 1e-3, 7.0, 0.25, 1.0, 1.0, 1.0], dtype=dtype, device=device)
    assert bool((kl_normal(m, s, m, s) == 0).all())
    s2 = s.clone()
    s2[-1] = -1.0
    s3 = s.clone()
    s3[-2] = 0.0
    out = kl_normal(m, s2, m, s3)
    assert bool(torch.isnan(out[-2:]).all()) and bool((out[:-2] == 0).all())
    out_nan = kl_normal(m, s, torch.where(torch.arange(7, device=device) == 0, math.nan, m), s)
    assert bool(torch.isnan(out_nan[0])) and bool((out_nan[1:] == 0).all())
    # Perturb one sigma by one ulp: KL > 0 (it is ~ (du)^2, normal in every dtype here).
    s4 = s.clone()
    s4[0] = torch.nextafter(s[0], torch.tensor(2.0, dtype=dtype, device=device))
    assert float(kl_normal(m, s4, m, s)[0]) > 0


@pytest.mark.claim("CRELU-1")
def test_crelu_shapes_and_gradients() -> None:
    mu = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    sigma = torch.rand(3, dtype=torch.float64) + 0.5
    m, v = crelu_moments(mu, sigma)
    assert m.shape == (2, 6) and v.shape == (2, 6)
    nm, nv = neg_relu_moments(mu, sigma)
    assert torch.equal(m[:, 3:], nm) and torch.equal(v[:, 3:], nv)
    assert torch.autograd.gradcheck(lambda a: crelu_moments(a, sigma)[1], (mu,))


# ---- RELU-6 and EXP-1: the fused float32 CPU kernel against the eager path ----------------------------------------

_NATIVE_SKIP = pytest.mark.skipif(
    not __import__("rln_verified._native.gauss", fromlist=["available"]).available(),
    reason="the fused float32 kernel is not built here (no C compiler or RLN_VERIFIED_NATIVE=0)",
)
_F32_TINY = float(torch.finfo(torch.float32).tiny)


def _ulps_apart(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in units of float32's spacing at max(|got|, |want|) (subnormal spacing 2^-149 below tiny);
    0 where both are NaN or equal, inf where only one is NaN."""
    g, w = got.double(), want.double()
    mag = torch.maximum(g.abs(), w.abs()).nan_to_num(0.0, posinf=0.0)
    spacing = torch.where(mag >= _F32_TINY, torch.exp2(torch.floor(torch.log2(mag.clamp_min(_F32_TINY))) - 23),
                          torch.full_like(mag, 2.0**-149))
    out = ((g - w).abs() / spacing).nan_to_num(0.0)
    same = (g == w) | (torch.isnan(g) & torch.isnan(w))
    out = torch.where(same, torch.zeros_like(out), out)
    return torch.where(torch.isnan(g) != torch.isnan(w), torch.full_like(out, math.inf), out)


def _relu_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) float32: a = mu/sigma over every order of magnitude and both sides of each branch switch
    (-40, -37.5, -4.5, 0, 37.5, 40), sigma over float32's range, and the special values."""
    base = [0.0, 1e-30, 1e-6, 0.3, 1.0, 2.0, 4.4, 4.5, 4.6, 8.3, 10.0, 20.0, 37.5, 39.99, 40.0, 40.01, 60.0, 1e3, 1e6]
    a32 = []
    for v in base:
        t = torch.tensor(v, dtype=torch.float32)
        for w in (t, torch.nextafter(t, torch.tensor(math.inf)), torch.nextafter(t, torch.tensor(-math.inf))):
            a32 += [float(w), -float(w)]
    sigmas = [1e-37, 1e-20, 1e-3, 0.42, 1.0, 7.0, 1e5, 1e20, 1e30]
    mu = [a * s for s in sigmas for a in a32]
    sg = [s for s in sigmas for _ in a32]
    mu += [1.0, -1.0, 0.0, 2.0, math.nan, 1.0, math.inf, -math.inf, 3.0, 1e38, -1e38]
    sg += [0.0, 0.0, 0.0, math.inf, 1.0, math.nan, 1.0, 1.0, -1.0, 1e-38, 1e-38]
    return torch.tensor(mu, dtype=torch.float32), torch.tensor(sg, dtype=torch.float32)


def _relu_both(mu: torch.Tensor, sigma: torch.Tensor, gm: torch.Tensor, gv: torch.Tensor,
               native: bool) -> list[torch.Tensor]:
    from rln_verified._native import gauss

    m_ = mu.clone().requires_grad_(True)
    s_ = sigma.clone().requires_grad_(True)
    if native:
        mean, var = relu_moments(m_, s_)
    else:
        with gauss.disabled():
            mean, var = relu_moments(m_, s_)
    g_mu, g_s = torch.autograd.grad([mean, var], [m_, s_], [gm, gv])
    return [mean.detach(), var.detach(), g_mu, g_s]


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6")
def test_native_relu_kernel_is_used_for_float32_cpu_only() -> None:
    from rln_verified._native import gauss

    x = torch.ones(3)
    assert gauss.usable(x, x)
    assert not gauss.usable(x.double(), x.double())
    with gauss.disabled():
        assert not gauss.usable(x, x)
    m, _ = relu_moments(x.requires_grad_(), torch.ones(3))
    assert type(m.grad_fn).__name__ == "_ReluMomentsF32Backward"
    # torch.func keeps the eager kernel (its vmap rule): within RELU-6's 1 ulp of the fused kernel, per element.
    g = torch.Generator().manual_seed(17)
    mu, sigma = torch.randn(2, 5, generator=g) * 6, torch.rand(2, 5, generator=g) + 0.1
    vm, vv = torch.vmap(relu_moments)(mu, sigma)
    fm, fv = relu_moments(mu, sigma)
    with gauss.disabled():
        em, ev = relu_moments(mu, sigma)
    assert vm.shape == (2, 5) and bool((vv >= 0).all())
    for batched, fused, eager in ((vm, fm, em), (vv, fv, ev)):
        assert float(_ulps_apart(batched, fused).max()) <= 1.0, (batched, fused)
        assert float(_ulps_apart(batched, eager).max()) <= 1.0, (batched, eager)


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6", "RELU-2", "RELU-3")
def test_native_matches_eager_on_the_branch_grid() -> None:
    """RELU-6 (3): the kernel's moments and gradients are within 1 ulp of float32 of the eager kernel's over the
    branch grid, NaN exactly where the eager kernel's are; also nonnegative (RELU-2)."""
    mu, sigma = _relu_grid()
    g = torch.Generator().manual_seed(5)
    gm, gv = torch.randn(mu.shape, generator=g), torch.randn(mu.shape, generator=g)
    nat, eag = _relu_both(mu, sigma, gm, gv, True), _relu_both(mu, sigma, gm, gv, False)
    for name, a, b in zip(("mean", "var", "dmu", "dsigma"), nat, eag):
        d = _ulps_apart(a, b)
        i = int(torch.argmax(d))
        assert float(d[i]) <= 1.0, (f"{name}: {float(d[i])} ulps apart at (mu, sigma) = ({float(mu[i])!r}, "
                                    f"{float(sigma[i])!r}): kernel {float(a[i])!r}, eager {float(b[i])!r}")
    ok = ~(torch.isnan(mu) | torch.isnan(sigma) | (sigma < 0))
    assert bool((nat[0][ok] >= 0).all()) and bool((nat[1][ok] >= 0).all())


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6")
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 127, 128, 129, 130, 515])
def test_native_lengths_and_layouts(n: int) -> None:
    """Every length (the kernel's 4-lane remainder and 128-lane blocks) and non-contiguous, broadcast inputs
    give the same values as the eager path elementwise."""
    g = torch.Generator().manual_seed(n)
    mu = torch.randn(n, generator=g) * 3
    sigma = torch.rand(n, generator=g) + 0.05
    gm, gv = torch.randn(n, generator=g), torch.randn(n, generator=g)
    nat, eag = _relu_both(mu, sigma, gm, gv, True), _relu_both(mu, sigma, gm, gv, False)
    for a, b in zip(nat, eag):
        assert float(_ulps_apart(a, b).max()) <= 1.0
    # A strided view and a broadcast sigma: the kernel sees contiguous copies; per element nothing changes.
    wide = torch.randn(n, 2, generator=g)[:, 0]
    m1, v1 = relu_moments(wide, torch.tensor(0.7))
    m2, v2 = relu_moments(wide.contiguous(), torch.full((n,), 0.7))
    assert torch.equal(m1, m2) and torch.equal(v1, v2)


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6")
# deadline=None: the first example may build the kernel (a C compile), which no per-example budget fits.
@settings(max_examples=200, deadline=None)
@given(a=st.floats(-60.0, 60.0), log_s=st.floats(-30.0, 30.0), gm=st.floats(-2.0, 2.0), gv=st.floats(-2.0, 2.0))
@example(a=-4.5, log_s=0.0, gm=1.0, gv=1.0)
@example(a=-37.6, log_s=20.0, gm=1.0, gv=-1.0)
@example(a=40.0, log_s=-20.0, gm=0.5, gv=2.0)
def test_native_matches_eager_property(a: float, log_s: float, gm: float, gv: float) -> None:
    sigma = torch.tensor([10.0**log_s], dtype=torch.float32)
    mu = (torch.tensor([a], dtype=torch.float64) * sigma.double()).float()
    g_m, g_v = torch.tensor([gm], dtype=torch.float32), torch.tensor([gv], dtype=torch.float32)
    nat, eag = _relu_both(mu, sigma, g_m, g_v, True), _relu_both(mu, sigma, g_m, g_v, False)
    worst = max(float(_ulps_apart(x, y).max()) for x, y in zip(nat, eag))
    target(worst, label="ulps between the kernel and the eager path")
    assert worst <= 1.0, (a, log_s, [float(t) for t in nat], [float(t) for t in eag])


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6")
def test_native_activation_from_the_variance() -> None:
    """RELU-6 (4): from a variance v, the kernel gives relu_moments(m, sqrt(clamp_min(v, tiny))) bit for bit, and
    dL/dv = dL/dsigma / (2 sigma) above tiny, 0 below or at a NaN."""
    from rln_verified._native import gauss

    g = torch.Generator().manual_seed(11)
    v = torch.rand(41, generator=g) * 2
    v[:9] = torch.tensor([0.0, -1.0, _F32_TINY / 2, _F32_TINY, _F32_TINY * 2, 1e-30, math.nan, math.inf, 1e30])
    m = torch.randn(41, generator=g)
    mean, var, aux = gauss.forward_raw(m, torch.sqrt(v), v)
    s = torch.sqrt(v.clamp_min(_F32_TINY))
    em, ev = relu_moments(m, s)
    assert torch.equal(mean.nan_to_num(-7.0), em.nan_to_num(-7.0)) and torch.equal(var.nan_to_num(-7.0),
                                                                                   ev.nan_to_num(-7.0))
    gm, gv = torch.randn(41, generator=g), torch.randn(41, generator=g)
    g_m, g_v = gauss.backward_raw(gm, gv, m, torch.sqrt(v), v, aux)
    s_ = s.clone().requires_grad_(True)
    m_ = m.clone().requires_grad_(True)
    rm, rv = relu_moments(m_, s_)
    want_m, want_s = torch.autograd.grad([rm, rv], [m_, s_], [gm, gv])
    assert torch.equal(g_m.nan_to_num(-7.0), want_m.nan_to_num(-7.0))
    keep = v >= _F32_TINY
    want_v = torch.where(keep, want_s.double() / (2 * s.double()), torch.zeros_like(s.double()))
    assert bool((g_v[~keep] == 0).all())
    assert float(_ulps_apart(g_v[keep], want_v[keep].float()).max()) <= 1.0


@_NATIVE_SKIP
@pytest.mark.claim("RELU-6", "RELU-4", "RELU-5")
def test_native_relu_check() -> None:
    """RELU-6 as the registered check (rln_verified/verify/gaussian.py::_relu_fused, also run by ``rln-verify``): the
    kernel's moments and partials within 1 float32 ulp of the eager kernel's, and within RELU-4's and RELU-5's float32
    bounds of the 90-digit references for |a| <= 1e3, over float32's range and the branch switches."""
    assert_check("RELU-6", "relu_moments", "cpu", torch.float32)


@_NATIVE_SKIP
@pytest.mark.claim("EXP-1", "C6")
def test_std_exp_check() -> None:
    """EXP-1 as the registered check (verify/gaussian.py::_exp1, also run by ``rln-verify``): a float32 layer's std()
    within 0.99 ulp of e^clamp(rho), var() = std()**2 and clamp's gradients bit for bit, after a sweep of every 257th
    float32 of the std's range (every one under the thorough profile: ``make verify-thorough``)."""
    assert_check("EXP-1", "BayesianLinear.std", "cpu", torch.float32)


def test_fused_checks_skip_without_the_kernel() -> None:
    """Where the fused kernel is off, RELU-6, EXP-1 and N11 report skipped with the reason, never holding."""
    from rln_verified._native import gauss, rnorm
    from rln_verified.verify._core import get_check, run_check
    from rln_verified.verify._profiles import profile_settings
    from rln_verified.verify._report import verdict

    cfg = profile_settings("dev")
    with gauss.disabled(), rnorm.disabled():
        for key in ("RELU-6/relu_moments", "EXP-1/BayesianLinear.std", "N11/RLayerNorm2d"):
            r = run_check(get_check(key), "cpu", torch.float32, settings_=cfg, seed_=1)
            assert verdict(r) == "skipped" and r.examples_tried == 0, (key, r.skip_reason)
            assert r.skip_reason is not None and "not in use here: switched off" in r.skip_reason, r.skip_reason


@_NATIVE_SKIP
@pytest.mark.claim("EXP-1")
def test_std_exp_within_one_ulp() -> None:
    """EXP-1 on every 257th float32 of the std's range and at its ends (every one: the EXP-1 check under the thorough
    profile, ``make verify-thorough``)."""
    from rln_verified._native import gauss

    lo32, hi32 = _std_log_range()
    worst, where = gauss.exp_max_ulp(lo32, hi32, 257)
    assert worst <= 0.99, f"{worst} ulp at x = {where!r}"
    for x in (lo32, hi32, 0.0, -0.0, math.log(0.01), -5.8573437):
        w1, _ = gauss.exp_max_ulp(float(torch.tensor(x, dtype=torch.float32)),
                                          float(torch.tensor(x, dtype=torch.float32)), 1)
        assert w1 <= 0.99, x


def _std_log_range() -> tuple[float, float]:
    fi = torch.finfo(torch.float32)
    lo = float(torch.tensor(math.log(float(fi.tiny) ** 0.25), dtype=torch.float32))
    hi = float(torch.tensor(math.log(float(fi.max) ** 0.125), dtype=torch.float32))
    return lo, hi


@_NATIVE_SKIP
@pytest.mark.claim("EXP-1")
def test_std_exp_clamp_and_saturation() -> None:
    """The kernel's exp(clamp(rho)) clamps as torch.clamp does (bounds rounded to float32), exp(0) = 1 exactly,
    NaN stays NaN, and the saturation flag is raised exactly when some element is clamped or NaN."""
    from rln_verified._native import gauss

    lo, hi = _std_log_range()
    rho = torch.tensor([-1e30, lo, 0.0, math.log(0.01), hi, 1e30, -30.0, 12.0], dtype=torch.float32)
    out, sat, _ = gauss.exp_clamp(rho, lo, hi, False)
    assert sat
    assert float(out[2]) == 1.0
    clamped = rho.clamp(lo, hi)
    assert torch.equal(out[[0, 6]], out[[1, 1]]) and torch.equal(out[[5, 7]], out[[4, 4]])
    assert bool((torch.isfinite(out) & (out > 0)).all())
    assert float(_ulps_apart(out, torch.exp(clamped.double()).float()).max()) <= 1.0
    inside, sat_in, w2 = gauss.exp_clamp(rho[1:5].contiguous(), lo, hi, True, rho[1:5].contiguous())
    assert not sat_in and w2 is not None and torch.equal(w2, rho[1:5] * rho[1:5])
    assert torch.equal(inside, out[1:5] * out[1:5])  # squared in float32, as torch.square
    nan_out, sat_nan, _ = gauss.exp_clamp(torch.tensor([0.0, math.nan]), lo, hi, False)
    assert sat_nan and bool(torch.isnan(nan_out[1])) and float(nan_out[0]) == 1.0


# ---- argument contracts, dtypes, dispatch and the float32 KL backward --------------------------------------------
# Each test below states a documented behaviour that the accuracy checks above never look at: the messages a user
# reads, the dtype of the result, which path a dtype or a tracer takes, and the float32 KL's hand-written backward.

_FLOAT_MSG = "expected a floating-point tensor (float64, float32, float16 or bfloat16), got torch.int64"


def _raises_exactly(exc: type[Exception], message: str, fn: Any, *args: Any) -> None:
    """fn(*args) raises exc whose message is exactly ``message`` (anchored at both ends)."""
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        fn(*args)


@pytest.mark.parametrize("fn", [normal_pdf, normal_cdf, normal_logcdf])
def test_gauss_messages_name_the_function_and_the_argument(fn: Any) -> None:
    name = fn.__name__
    f32, i64 = torch.ones(3), torch.ones(3, dtype=torch.int64)
    _raises_exactly(TypeError, f"{name}: x: {_FLOAT_MSG}", fn, i64)
    _raises_exactly(TypeError, f"{name}: mu: {_FLOAT_MSG}", fn, f32, i64)
    _raises_exactly(TypeError, f"{name}: sigma: {_FLOAT_MSG}", fn, f32, 0.0, i64)
    _raises_exactly(TypeError, f"{name}: mu: expected a float or a floating-point tensor, got str", fn, f32, "0")
    _raises_exactly(TypeError, f"{name}: sigma: expected a float or a floating-point tensor, got bool", fn, f32,
                    0.0, True)
    # "tensors of different dtypes" (the docstring): mu or sigma of another dtype than x is refused, never cast.
    _raises_exactly(TypeError, f"expected tensors of one floating dtype, got x=torch.float32, {name}: mu=torch.float64",
                    fn, f32, torch.zeros(3, dtype=torch.float64))
    _raises_exactly(TypeError,
                    f"expected tensors of one floating dtype, got x=torch.float32, {name}: sigma=torch.float64",
                    fn, f32, 0.0, torch.ones((), dtype=torch.float64))


def test_moment_messages_name_the_function_and_the_argument() -> None:
    f32, i64 = torch.ones(3), torch.ones(3, dtype=torch.int64)
    for fn in (relu_moments, crelu_moments):
        name = fn.__name__
        _raises_exactly(TypeError, f"{name}: mu: {_FLOAT_MSG}", fn, i64, f32)
        _raises_exactly(TypeError, f"{name}: sigma: {_FLOAT_MSG}", fn, f32, i64)
        _raises_exactly(TypeError, f"expected tensors of one floating dtype, got {name}: mu=torch.float32, "
                        f"{name}: sigma=torch.float64", fn, f32, f32.double())
        _raises_exactly(ValueError, f"{name}: mu and sigma must broadcast together, got shapes (3,) and (2,)", fn,
                        f32, torch.ones(2))
    _raises_exactly(TypeError, f"neg_relu_moments: mu: {_FLOAT_MSG}", neg_relu_moments, i64, f32)
    _raises_exactly(ValueError, "crelu_moments: needs at least one dimension to concatenate on, got 0-d tensors",
                    crelu_moments, torch.tensor(1.0), torch.tensor(1.0))


def test_kl_messages_name_the_argument() -> None:
    names = ("mu_q", "sigma_q", "mu_p", "sigma_p")
    for i, name in enumerate(names):
        args = [torch.ones(3) for _ in names]
        args[i] = torch.ones(3, dtype=torch.int64)
        _raises_exactly(TypeError, f"kl_normal: {name}: {_FLOAT_MSG}", kl_normal, *args)
    args = [torch.ones(3) for _ in names]
    args[3] = args[3].double()
    got = ", ".join(f"kl_normal: {n}={t.dtype}" for n, t in zip(names, args))
    _raises_exactly(TypeError, f"expected tensors of one floating dtype, got {got}", kl_normal, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kl_broadcast_message(dtype: torch.dtype) -> None:
    """Shapes that do not broadcast get the same ValueError naming every shape on every path: the fused float32
    kernel, the plain forms (float64, bfloat16) and under torch.func."""
    args = tuple(torch.ones(n, dtype=dtype) for n in (2, 3, 2, 1))
    msg = "kl_normal: the arguments must broadcast together, got shapes [(2,), (3,), (2,), (1,)]"
    _raises_exactly(ValueError, msg, kl_normal, *args)
    _raises_exactly(ValueError, msg, torch.func.grad(lambda q: kl_normal(q, *args[1:]).sum()), args[0])


@pytest.mark.claim("GAUSS-1")
def test_gauss_defaults_and_python_float_arguments() -> None:
    """mu = 0 and sigma = 1 by default (the standard normal), and a Python float argument is taken in x's dtype:
    the same result, bit for bit, as a tensor of x's dtype holding that float."""
    z = torch.linspace(-9.0, 9.0, 73, dtype=torch.float64)
    u = 2.0**-53
    ref = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # z^2/2 exact-ish here: a few u, inside GAUSS-1's bound
    assert bool(((normal_pdf(z) - ref).abs() <= (16 + 3 * z * z) * u * ref).all())
    for fn in (normal_pdf, normal_cdf, normal_logcdf):
        assert torch.equal(fn(z), fn(z, torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)))
        for dtype in (torch.float64, torch.float32):
            x = z.to(dtype)
            want = fn(x, torch.tensor(0.3, dtype=dtype), torch.tensor(1.7, dtype=dtype))
            assert torch.equal(fn(x, 0.3, 1.7), want), (fn.__name__, dtype)


@pytest.mark.claim("GAUSS-1")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gauss_low_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    """float16/bfloat16 are computed in float32 (the docstrings): the result is the float32 result on the same
    (exactly upcast) values, rounded once to the input dtype, whichever argument carries the shape."""
    g = torch.Generator().manual_seed(23)
    n = 400
    x = (torch.randn(n, generator=g) * 4).to(dtype)
    mu = (torch.randn(n, generator=g) * 2).to(dtype)
    sigma = (torch.rand(n, generator=g) * 3 + 0.05).to(dtype)
    x0, mu0, s0 = x[7].clone(), mu[11].clone(), sigma[5].clone()  # 0-d tensors
    for fn in (normal_pdf, normal_cdf, normal_logcdf):
        for args in ((x, mu, sigma), (x0, mu, sigma), (x, mu0, s0), (x0, mu0, sigma), (x0, mu, s0)):
            out = fn(*args)
            want = fn(*(a.float() for a in args)).to(dtype)
            assert out.dtype == dtype
            assert torch.equal(out.nan_to_num(7.0), want.nan_to_num(7.0)), (fn.__name__, [a.dim() for a in args])


@pytest.mark.claim("CRELU-1")
def test_crelu_concatenates_on_the_last_dimension() -> None:
    g = torch.Generator().manual_seed(29)
    mu = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    sigma = torch.rand(3, 1, dtype=torch.float64, generator=g) + 0.1
    m, v = crelu_moments(mu, sigma)
    pm, pv = relu_moments(mu, sigma)
    nm, nv = neg_relu_moments(mu, sigma)
    assert m.shape == v.shape == (2, 3, 8)
    assert torch.equal(m, torch.cat([pm, nm], dim=-1)) and torch.equal(v, torch.cat([pv, nv], dim=-1))


def test_onnx_export_is_refused_with_the_reason(tmp_path: Any) -> None:
    """Under torch.onnx.export the tail kernels refuse (ONNX has no erfcx): the message names the kernel, says why,
    and what to do instead."""
    reason = ("ONNX export is not supported: ONNX has no erfcx, and its exp(y^2) erfc(y) replacement overflows in the "
              "Gaussian tails this kernel is accurate in; use torch.export (the program keeps the kernel), or compute "
              "this part outside the ONNX graph")

    class Cdf(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return normal_cdf(x)

    class Relu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return relu_moments(x, torch.ones_like(x))[1]

    import warnings

    for mod, who in ((Cdf(), "the Gaussian tail (Mills ratio)"), (Relu(), "relu_moments")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(NotImplementedError, match="^" + re.escape(f"{who}: {reason}") + "$"):
                torch.onnx.export(mod, (torch.ones(3),), tmp_path / "refused.onnx", dynamo=False)


@pytest.mark.claim("RELU-6")
def test_traced_moments_keep_the_kernel_as_one_operator() -> None:
    """Under torch.jit.trace, float32 relu_moments is recorded as the one operator rln_verified::relu_moments_f32
    (the fused kernel, RELU-6), so the trace computes on new inputs exactly what eager float32 does; float64 is
    recorded as the eager forms (no such operator) and also reproduces eager float64 on new inputs."""
    g = torch.Generator().manual_seed(31)
    a = [torch.randn(6, generator=g) * 5, torch.rand(6, generator=g) + 0.1]
    b = [torch.randn(6, generator=g) * 5, torch.rand(6, generator=g) + 0.1]
    for dtype, has_op in ((torch.float32, True), (torch.float64, False)):
        tr = torch.jit.trace(relu_moments, tuple(t.to(dtype) for t in a), check_trace=False)  # type: ignore[no-untyped-call]
        assert ("rln_verified::relu_moments_f32" in str(tr.graph)) == has_op, dtype
        got = tr(*(t.to(dtype) for t in b))
        want = relu_moments(*(t.to(dtype) for t in b))
        assert all(torch.equal(x, y) for x, y in zip(got, want)), dtype


@pytest.mark.claim("KL-1")
def test_traced_kl_recomputes_on_new_inputs() -> None:
    """A torch.jit.trace of float32 kl_normal records torch operations (the plain forms), so the trace run on new
    inputs gives their KL, within KL-1's float32 bound of the 100-digit reference."""
    g = torch.Generator().manual_seed(37)

    def draw() -> list[torch.Tensor]:
        return [torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.2, torch.randn(5, generator=g),
                torch.rand(5, generator=g) + 0.2]

    a, b = draw(), draw()
    tr = torch.jit.trace(kl_normal, tuple(a), check_trace=False)  # type: ignore[no-untyped-call]
    got = tr(*b).double()
    for i in range(5):
        want = float(kl_ref(*(float(t[i]) for t in b)))
        assert abs(float(got[i]) - want) <= kl_tol(torch.float32) * want, i


@pytest.mark.claim("KL-1")
def test_kl_under_vmap_and_grad_float32() -> None:
    """torch.func runs KL-1's plain forms (the fused kernel has no batching rule): vmap gives each element's KL within
    KL-1's float32 bound, and grad of it matches the closed-form partial dKL/dmu_q = (mu_q - mu_p)/sigma_p^2."""
    g = torch.Generator().manual_seed(41)
    mq, mp = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    sq, sp = torch.rand(3, 4, generator=g) + 0.3, torch.rand(3, 4, generator=g) + 0.3
    out = torch.vmap(kl_normal)(mq, sq, mp, sp).double()
    for i, j in ((0, 0), (1, 2), (2, 3)):
        want = float(kl_ref(float(mq[i, j]), float(sq[i, j]), float(mp[i, j]), float(sp[i, j])))
        assert abs(float(out[i, j]) - want) <= kl_tol(torch.float32) * want
    d = torch.func.grad(lambda m: kl_normal(m, sq[0, 0], mp[0, 0], sp[0, 0]))(mq[0, 0])
    want_d = (mq[0, 0].double() - mp[0, 0].double()) / sp[0, 0].double() ** 2
    # Plain float32 forms: a few roundings of d/sp (each <= u32), far inside 1e-5 relative.
    assert abs(float(d) - float(want_d)) <= 1e-5 * abs(float(want_d))


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_domain_edges(dtype: torch.dtype) -> None:
    """sigma_q = 0 is inside the domain (a point mass: KL = +inf); sigma_p < 0 is outside (NaN) even where the
    formula would give a finite number (sigma_q = -2 sigma_p makes t finite); the result has the input dtype."""
    def kl(*v: float) -> torch.Tensor:
        return kl_normal(*(torch.tensor([x], dtype=dtype) for x in v))

    point = kl(0.0, 0.0, 0.5, 1.0)
    assert point.dtype == dtype and float(point) == math.inf
    assert math.isnan(float(kl(0.0, 2.0, 0.0, -1.0))) and math.isnan(float(kl(1.0, 1.0, 0.0, -1.0)))
    assert math.isnan(float(kl(0.0, -1.0, 0.0, 1.0)))


@pytest.mark.claim("KL-1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_kl_at_the_smallest_normal_ratio(dtype: torch.dtype) -> None:
    """At r = sigma_q/sigma_p equal to the compute dtype's smallest normal number (where ln r switches from the
    quotient to log sigma_q - log sigma_p), KL-1's bound holds. bfloat16 is computed in float32 and holds float32's
    smallest normal exactly."""
    tiny = float(torch.finfo(compute_dtype(dtype)).tiny)
    for sp in (1.0, 4.0):
        args = [torch.tensor([v], dtype=dtype) for v in (0.0, tiny * sp, 0.0, sp)]
        want = float(kl_ref(*(float(a.double()) for a in args)))
        got = float(kl_normal(*args).double())
        assert abs(got - want) <= kl_tol(dtype) * want, (sp, got, want)


def _kl_partials(args: list[torch.Tensor]) -> list[torch.Tensor]:
    """KL-2's closed-form partials in float64 on the float32 inputs (docstring of _KLNormalF32)."""
    q, s, p, r = (a.detach().double() for a in args)
    dm = q - p
    return [dm / r**2, (s - r) * (s + r) / (r**2 * s), -dm / r**2, ((r - s) * (r + s) - dm * dm) / r**3]


@_NATIVE_SKIP
@pytest.mark.claim("KL-2")
def test_kl_float32_kernel_value_and_backward() -> None:
    """float32 on CPU runs the fused kernel (KL-2): relative error <= u32 + 2^-44 against the 100-digit reference,
    and its hand-written backward gives each partial in float64 rounded once (relative error <= u32 + 2^-40 against
    the float64 closed forms), for every subset of the arguments that requires grad."""
    g = torch.Generator().manual_seed(43)
    n = 64
    base = [torch.randn(n, generator=g) * 2, torch.exp(torch.randn(n, generator=g)), torch.randn(n, generator=g),
            torch.exp(torch.randn(n, generator=g))]
    u32 = 2.0**-24
    out = kl_normal(*base).double()
    for i in range(0, n, 4):
        want = float(kl_ref(*(float(t[i]) for t in base)))
        assert abs(float(out[i]) - want) <= (u32 + 2.0**-44) * want, i
    up = torch.randn(n, generator=g)
    ref = _kl_partials(base)
    for mask in range(1, 16):
        args = [t.clone().requires_grad_(bool(mask >> k & 1)) for k, t in enumerate(base)]
        kl = kl_normal(*args)
        assert type(kl.grad_fn).__name__ == "_KLNormalF32Backward"
        wanted = [a for a in args if a.requires_grad]
        grads = torch.autograd.grad(kl, wanted, up)
        refs = [r for a, r in zip(args, ref) if a.requires_grad]
        for got, e in zip(grads, refs, strict=True):
            e = e * up.double()
            assert got.dtype == torch.float32
            assert float(((got.double() - e).abs() / e.abs()).max()) <= u32 + 2.0**-40, mask


@_NATIVE_SKIP
@pytest.mark.claim("KL-2", "KL-1")
def test_kl_float32_double_backward() -> None:
    """create_graph=True through the fused float32 KL: the first derivatives are KL-2's partials (to float32
    rounding of the plain forms) and differentiate again to the closed forms d2/dmu_q^2 = 1/sigma_p^2,
    d2/dmu_q dmu_p = -1/sigma_p^2, d2/dmu_q dsigma_p = -2 (mu_q - mu_p)/sigma_p^3, d2/dsigma_q^2 = 1/sigma_p^2 +
    1/sigma_q^2."""
    g = torch.Generator().manual_seed(47)
    n = 16
    args = [torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g),
            torch.rand(n, generator=g) + 0.5]
    args = [a.requires_grad_() for a in args]
    kl = kl_normal(*args)
    assert type(kl.grad_fn).__name__ == "_KLNormalF32Backward"
    first = torch.autograd.grad(kl.sum(), args, create_graph=True)
    tol = 1e-5  # plain float32 forms: a handful of roundings (each <= 2^-24) on quantities of size ~1
    for got, e in zip(first, _kl_partials(args), strict=True):
        assert float(((got.detach().double() - e).abs() / e.abs().clamp_min(1e-3)).max()) <= tol
    q, s, p, r = (a.detach().double() for a in args)
    d_mq = torch.autograd.grad(first[0].sum(), [args[0], args[2], args[3]], retain_graph=True)
    d_sq = torch.autograd.grad(first[1].sum(), args[1])[0]
    want = [1 / r**2, -1 / r**2, -2 * (q - p) / r**3]
    for got, e in zip(d_mq, want, strict=True):
        assert float(((got.detach().double() - e).abs() / e.abs().clamp_min(1e-3)).max()) <= tol
    assert float(((d_sq.double() - (1 / r**2 + 1 / s**2)).abs() / (1 / r**2 + 1 / s**2)).max()) <= tol


@pytest.mark.claim("RELU-3", "RELU-5")
def test_relu_torch_func_gradients_match_the_eager_backward() -> None:
    """torch.func differentiates the plain forms; its gradients agree with the eager closed-form backward (RELU-5)
    everywhere, including sigma = 0 (RELU-3: dmean/dmu = Phi(a) with a = +-inf or 0, so 1, 0 or 1/2 at mu = 0)."""
    mu = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.3, -2.0, -7.0, 0.0, 25.0], dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    m_ = mu.clone().requires_grad_()
    s_ = sigma.clone().requires_grad_()
    mean, var = relu_moments(m_, s_)
    for k, out in enumerate((mean, var)):
        eager = torch.autograd.grad(out.sum(), (m_, s_), retain_graph=True)

        def f(m: torch.Tensor, s: torch.Tensor, k: int = k) -> torch.Tensor:
            return relu_moments(m, s)[k]

        for i in range(len(mu)):
            fg = torch.func.grad(f, argnums=(0, 1))(mu[i], sigma[i])
            for got, want in zip(fg, eager):
                # both evaluate RELU-5's quantities in float64: within RELU-5's (420 + 7 a^2) u64 of each other
                # (a <= 25 here), plus an absolute u64 for partials that are 0.
                w = float(want[i])
                assert abs(float(got) - w) <= 5e-13 * abs(w) + 2.0**-53, (k, float(mu[i]), float(sigma[i]), got, w)
    assert float(torch.func.grad(lambda m: relu_moments(m, sigma[0])[0])(mu[0])) == 0.5


@pytest.mark.claim("GAUSS-1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_pdf_at_infinite_sigma_is_zero_with_zero_gradients(device: str, dtype: torch.dtype) -> None:
    """sigma = inf gives density 0 (the sigma -> inf limit), and the gradients of that constant are 0, not NaN, so an
    infinite scale does not poison a backward pass."""
    x = torch.tensor([0.0, 1.0, -3.0], dtype=dtype, device=device, requires_grad=True)
    mu = torch.tensor(0.25, dtype=dtype, device=device, requires_grad=True)
    sigma = torch.full((3,), math.inf, dtype=dtype, device=device, requires_grad=True)
    out = normal_pdf(x, mu, sigma)
    assert bool((out == 0).all())
    for gr in torch.autograd.grad(out.sum(), (x, mu, sigma)):
        assert bool((gr == 0).all()), gr


@pytest.mark.claim("RELU-4", "GAUSS-1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_path_on_the_device(device: str, dtype: torch.dtype) -> None:
    """On each device: relu_moments within RELU-4's bound of the CPU float64 result (float32 on CUDA runs the
    operator), and the Gaussian functions give the same values, on x's device, for Python-float and 0-d tensor mu and
    sigma."""
    g = torch.Generator().manual_seed(53)
    mu = torch.randn(64, generator=g, dtype=torch.float64) * 6
    sigma = torch.rand(64, generator=g, dtype=torch.float64) + 0.05
    mean, var = relu_moments(mu.to(device, dtype), sigma.to(device, dtype))
    assert mean.device.type == torch.device(device).type and mean.dtype == dtype
    rm, rv = relu_moments(mu.to(dtype).double(), sigma.to(dtype).double())  # on the rounded inputs
    tiny = float(torch.finfo(dtype).tiny)
    for got, want in ((mean, rm), (var, rv)):
        normal = want >= tiny  # RELU-4's bound is stated where the true value is a normal float
        err = (got.cpu().double() - want).abs() / want.clamp_min(tiny)
        assert float(err[normal].max()) <= relu_tol(dtype)
    x = mu.to(device, dtype)
    for fn in (normal_pdf, normal_cdf, normal_logcdf):
        out = fn(x, 0.3, 1.7)
        assert out.device == x.device and out.dtype == dtype
        want = fn(x, torch.tensor(0.3, dtype=dtype, device=device), torch.tensor(1.7, dtype=dtype, device=device))
        assert torch.equal(out, want)


@_NATIVE_SKIP
@pytest.mark.claim("RELU-4", "RELU-5")
def test_relu_float32_without_the_kernel_is_float64_rounded_once() -> None:
    """Where the fused kernel is off, float32 runs the eager kernel: computed in float64 and cast back (the
    docstring), so values and gradients are bit for bit the float64 results on the same inputs, rounded to float32."""
    from rln_verified._native import gauss

    mu, sigma = _relu_grid()
    g = torch.Generator().manual_seed(59)
    gm, gv = torch.randn(mu.shape, generator=g), torch.randn(mu.shape, generator=g)
    with gauss.disabled():
        got = _relu_both(mu, sigma, gm, gv, True)
    want = _relu_both(mu.double(), sigma.double(), gm.double(), gv.double(), True)
    for name, a, b in zip(("mean", "var", "dmu", "dsigma"), got, want):
        assert a.dtype == torch.float32
        assert torch.equal(a.nan_to_num(7.0), b.float().nan_to_num(7.0)), name


@pytest.mark.claim("RELU-6")
def test_relu_meta_tensors_match_the_cpu_layout() -> None:
    """Meta tensors (shape inference) get what a CPU float32 call returns: the broadcast shape, float32, and the
    same strides, also for a transposed input."""
    for shapes in (((3, 4), (4,)), ((2, 1, 5), (1, 3, 1)), ((), ())):
        cpu = relu_moments(torch.ones(shapes[0]), torch.ones(shapes[1]))
        meta = relu_moments(torch.empty(shapes[0], device="meta"), torch.empty(shapes[1], device="meta"))
        for c, m in zip(cpu, meta):
            assert m.is_meta and (m.shape, m.dtype, m.stride()) == (c.shape, c.dtype, c.stride())
    t = torch.ones(4, 3).t()
    cpu = relu_moments(t, t)
    meta = relu_moments(torch.empty(4, 3, device="meta").t(), torch.empty(4, 3, device="meta").t())
    for c, m in zip(cpu, meta):
        assert (m.shape, m.stride()) == (c.shape, c.stride())


def test_constants_are_correctly_rounded() -> None:
    """1/sqrt(2 pi), sqrt(pi/2) and sqrt(1/2) in the formula module, the Triton kernel and the C kernel are the
    float64 values nearest the exact constants (mpmath at 200 bits); sqrt(0.5 * math.pi) is 1 ulp low."""
    import importlib.util
    from pathlib import Path

    import mpmath

    from rln_verified import _gaussian_formula as gf

    with mpmath.workprec(200):
        exact = {"INV_SQRT_2PI": float(1 / mpmath.sqrt(2 * mpmath.pi)),
                 "SQRT_HALF_PI": float(mpmath.sqrt(mpmath.pi / 2)),
                 "SQRT_HALF": float(mpmath.sqrt(mpmath.mpf(1) / 2))}
    c_src = (Path(gf.__file__).parent / "_native" / "gauss.c").read_text()
    spec = importlib.util.find_spec("rln_verified._native.gauss_triton")
    assert spec is not None and spec.origin is not None
    t_src = Path(spec.origin).read_text()
    for name, value in exact.items():
        assert getattr(gf, "_" + name) == value, name
        assert float(re.search(rf"#define {name} (\S+)", c_src).group(1)) == value, name  # type: ignore[union-attr]
        assert float(re.search(rf"^_{name} = (\S+)$", t_src, re.M).group(1)) == value, name  # type: ignore[union-attr]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traces_of_the_autograd_functions_save_and_load(dtype: torch.dtype) -> None:
    """Under torch.jit.trace, psi, kl_normal and relu_moments run their plain forms (a trace that holds a Python
    autograd.Function cannot be saved), so the trace survives torch.jit.save/load: the loaded trace gives the values
    and gradients of the trace before saving, bit for bit. Their accuracy against the float64 reference is the
    transform matrix's (the jit_trace cells, which save and load too)."""
    import io
    import warnings

    from rln_verified.functional import psi

    g = torch.Generator().manual_seed(7)
    a = torch.rand(5, generator=g, dtype=torch.float64).to(dtype) * 3 - 1
    b = torch.rand(5, generator=g, dtype=torch.float64).to(dtype) + 0.25
    cases: list[tuple[Any, tuple[torch.Tensor, ...]]] = [
        (lambda t: psi(t), (b,)),
        (lambda m, s: kl_normal(m, s, 0.5 * m, s + 1), (a, b)),
        (lambda m, s: relu_moments(m, s)[0] + relu_moments(m, s)[1], (a, b)),
    ]
    for fn, args in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            tr = torch.jit.trace(fn, args, check_trace=False)  # type: ignore[no-untyped-call]
        buf = io.BytesIO()
        torch.jit.save(tr, buf)  # type: ignore[no-untyped-call]
        buf.seek(0)
        loaded = torch.jit.load(buf)  # type: ignore[no-untyped-call]
        results = []
        for m in (tr, loaded):
            req = [x.clone().requires_grad_(True) for x in args]
            out = m(*req)
            results.append((out.detach(), *torch.autograd.grad(out.sum(), req)))
        for got, want in zip(*results, strict=True):
            assert torch.equal(got, want)


@pytest.mark.claim("KL-1")
def test_kl_beyond_its_range_is_inf_on_every_path() -> None:
    """At points past KL-1's range where the true KL is infinite (sigma_p = inf, sigma_q = inf) or overflows the
    dtype (float64 r = 1e300 or d = 1e400; float32 r = 1e30, KL = 5e59), every path returns +inf: the fused float32
    kernel, the plain forms (vmap) and torch.compile. The plain forms formed inf/inf there (NaN), and the fused
    kernel's rounding guard turned sigma_p = inf's NaN into 0. sigma_q = sigma_p = inf has no limit: NaN."""
    cases = [((0.0, 1.0, 0.0, 1e-300), torch.float64, math.inf), ((1e200, 1.0, 0.0, 1e-200), torch.float64, math.inf),
             ((0.0, 1.0, 0.0, 1e-30), torch.float32, math.inf)]
    for dt in (torch.float32, torch.float64):
        cases += [((0.0, math.inf, 0.0, 1.0), dt, math.inf), ((0.0, 1.0, 0.0, math.inf), dt, math.inf),
                  ((3.0, 1.0, 0.0, math.inf), dt, math.inf), ((0.0, math.inf, 0.0, math.inf), dt, math.nan)]
    compiled = torch.compile(kl_normal, backend="aot_eager")
    for vals, dt, want in cases:
        args = [torch.tensor([v], dtype=dt) for v in vals]
        for path, fn in (("eager", kl_normal), ("vmap", torch.func.vmap(kl_normal)), ("compile", compiled)):
            got = float(fn(*args)[0])
            assert (math.isnan(got) if math.isnan(want) else got == want), (vals, dt, path, got)
