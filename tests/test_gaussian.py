"""Tests of GAUSS-*, RELU-*, CRELU-* and KL-* (proofs/gaussian.md). The property checks live in
rln_verified/verify/gaussian.py; the tests here are thin, plus errors, gradcheck and regressions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

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
from rln_verified.verify.gaussian import kl_ref, kl_tol, relu_moments_ref, relu_tol

DTYPES = [torch.float64, torch.float32]


@pytest.mark.claim("GAUSS-1")
@pytest.mark.parametrize("subject", ["normal_pdf", "normal_cdf", "normal_logcdf"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gauss_accuracy(subject: str, device: str, dtype: torch.dtype) -> None:
    assert_check("GAUSS-1", subject, device, dtype)


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
    """The 601-point float32 grid a in [-60, 0] (issue 2): the textbook formula goes negative there;
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
    # torch forms 0.5 (v + d^2 - 1 - log v), v = r^2: its rounding is ~8u (v + d^2 + 1 + |log v|).
    r2 = (args[1].double() / args[3].double()) ** 2
    d2 = ((args[0].double() - args[2].double()) / args[3].double()) ** 2
    u = torch.finfo(dtype).eps / 2
    budget = 8 * u * (r2 + d2 + 1 + r2.log().abs()) + kl_tol(dtype) * ours
    assert bool(((ours - theirs).abs() <= budget).all())
    assert bool((ours >= 0).all())


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
