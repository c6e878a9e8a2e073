"""psi, softplus and inv_softplus: PSI-* and SP-* (proofs/special.md)."""

from __future__ import annotations

import math
import re

import mpmath
import pytest
import torch
from _sweeps import inv_softplus_exhaustive, inv_softplus_sweep, psi_sweep, softplus_sweep

from rln_verified import functional as Fn
from rln_verified._special import PSI_SPLIT, psi_and_dpsi
from rln_verified.verify import assert_check
from rln_verified.verify._core import ALL_DTYPES
from rln_verified.verify.special import (
    dpsi_ref,
    inv_softplus_error_bound,
    psi_grad_tol,
    psi_ref,
    psi_tol,
    rel_err,
    round_trip_y_bound,
)

ALL = pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))


@pytest.mark.claim("PSI-1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_series_truncation_bound(dtype: torch.dtype) -> None:
    """The J-term series leaves the remainder PSI-1 states, and that remainder is below u at the switch."""
    t0, j = PSI_SPLIT[dtype]
    for t in [t0, t0 / 3, t0 / 10, t0 / 1000]:
        # 150 digits: the remainders reach 1e-60, far below the 50-digit noise floor.
        with mpmath.workdps(150):
            tt = mpmath.mpf(t)
            w = tt / (2 + tt)
            z = w * w
            partial = 2 * z / (1 + w) + 2 * w * z * sum(z**k / (2 * k + 3) for k in range(j))
            exact = mpmath.log1p(tt) - tt / (1 + tt)
            remainder = (exact - partial) / exact
            bound = z**j / ((2 * j + 3) * (1 - z))
            assert 0 <= remainder <= bound, (t, remainder, bound)
        # The truncation must cost less than half a unit roundoff, or J is too small for the dtype.
        assert float(bound) < torch.finfo(dtype).eps / 4, (t, float(bound))


@pytest.mark.claim("PSI-1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_series_remainder_property(dtype: torch.dtype, device: str) -> None:
    """Hypothesis over t in (1e-12, 1 + sqrt 5] and J in 1..12: 0 <= R_J/psi <= the PSI-1 bound, target() on
    the ratio; and the configured (t0, J) keeps the truncation below eps/4."""
    assert_check("PSI-1", "psi", device, dtype)


@pytest.mark.claim("PSI-1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_switch_point_is_continuous(dtype: torch.dtype, device: str) -> None:
    """Both sides of the series/direct switch agree with mpmath to PSI-3's derived bound (44 eps / 10 eps)."""
    t0, _ = PSI_SPLIT[dtype]
    below, above = math.nextafter(t0, 0.0), math.nextafter(t0, 2.0)
    out = Fn.psi(torch.tensor([below, t0, above], dtype=dtype, device=device)).double().cpu().tolist()
    tol = psi_tol(dtype)
    for t, v in zip([below, t0, above], out):
        t_d = float(torch.tensor(t, dtype=dtype).double())
        assert rel_err(v, psi_ref(t_d)) <= tol


@pytest.mark.claim("PSI-2")
@ALL
def test_psi_shape(dtype: torch.dtype, device: str) -> None:
    assert_check("PSI-2", "psi", device, dtype)


@pytest.mark.claim("PSI-3")
@ALL
def test_psi_accuracy(dtype: torch.dtype, device: str) -> None:
    assert_check("PSI-3", "psi", device, dtype)


@pytest.mark.claim("PSI-3")
def test_textbook_psi_fails_where_ours_holds() -> None:
    """Regression: the textbook log1p(t) - t/(1+t) in float32 is 100% wrong at 1e-8; ours is within PSI-3's 10 eps."""
    t = torch.tensor([1e-8, 1e-6, 1e-4], dtype=torch.float32)
    textbook = (torch.log1p(t) - t / (1 + t)).double().tolist()
    ours = Fn.psi(t).double().tolist()
    for tv, tb, ov in zip(t.double().tolist(), textbook, ours):
        ref = psi_ref(tv)
        assert rel_err(ov, ref) <= psi_tol(torch.float32)
        # The defect the issue reports, measured here so the comparison is not vacuous.
        assert rel_err(tb, ref) > 1e-4


@pytest.mark.claim("PSI-3")
@ALL
def test_psi_mpmath_sweep(dtype: torch.dtype, device: str) -> None:
    """scipy-style sweep: every order of magnitude of the dtype (4 points a decade, subnormals to max) and both
    sides of t0, 1/u_c and the underflow edge, against mpmath; the message names the worst errors."""
    sweep = psi_sweep(device, dtype)
    assert sweep.ok, sweep.report()


@pytest.mark.claim("PSI-4")
@ALL
def test_psi_gradient(dtype: torch.dtype, device: str) -> None:
    assert_check("PSI-4", "psi", device, dtype)


@pytest.mark.claim("PSI-4")
def test_psi_gradcheck_and_jacrev() -> None:
    t = torch.tensor([1e-6, 0.05, 0.1, 0.3, 1.0, 7.0, 1e4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Fn.psi, (t,))
    assert torch.autograd.gradgradcheck(Fn.psi, (t,))
    jac = torch.func.jacrev(Fn.psi)(t.detach())
    expected = torch.diag(t.detach() / (1 + t.detach()) ** 2)
    # PSI-4's gamma_4 for the kernel, plus the expected value's own three roundings (1 + t, the square, the divide).
    rtol = psi_grad_tol(torch.float64) + 3 * torch.finfo(torch.float64).eps / 2
    torch.testing.assert_close(jac, expected, rtol=rtol, atol=0.0)


@pytest.mark.claim("PSI-2", "PSI-4")
def test_psi_special_values(device: str) -> None:
    t = torch.tensor([0.0, -0.0, math.inf, -1.0, math.nan, 2.0], dtype=torch.float64, device=device,
                     requires_grad=True)
    out = Fn.psi(t)
    assert out[0].item() == 0.0 and out[1].item() == 0.0
    assert out[2].item() == math.inf
    assert math.isnan(out[3].item()) and math.isnan(out[4].item())
    assert math.isfinite(out[5].item())  # NaN at one element never touches another
    out[torch.tensor([0, 2, 5], device=device)].sum().backward()
    assert t.grad is not None
    assert torch.isfinite(t.grad[[0, 1, 2, 5]]).all()
    assert t.grad[0].item() == 0.0


@pytest.mark.claim("SP-1")
@ALL
def test_softplus(dtype: torch.dtype, device: str) -> None:
    assert_check("SP-1", "softplus", device, dtype)


@pytest.mark.claim("SP-1")
@ALL
def test_softplus_mpmath_sweep(dtype: torch.dtype, device: str) -> None:
    """+-x over every order of magnitude of the dtype and both sides of T, ln(max) and the underflow edges:
    finite everywhere, exactly x above T, within 3 eps (+ u_d) of mpmath where the result is normal."""
    sweep = softplus_sweep(device, dtype)
    assert sweep.ok, sweep.report()


@pytest.mark.claim("SP-1")
def test_softplus_gradient_is_sigmoid() -> None:
    x = torch.tensor([-800.0, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0], dtype=torch.float64, requires_grad=True)
    Fn.softplus(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()), rtol=4 * torch.finfo(torch.float64).eps,
                               atol=0.0)


@pytest.mark.claim("SP-2")
@ALL
def test_round_trip_y(dtype: torch.dtype, device: str) -> None:
    assert_check("SP-2", "inv_softplus", device, dtype)


@pytest.mark.claim("SP-2")
@ALL
def test_inv_softplus_mpmath_sweep(dtype: torch.dtype, device: str) -> None:
    """Every order of magnitude of the positive normals, both sides of ln 2, the ends and the pinned
    counterexamples: inv_softplus within Delta of mpmath (SP-2 a) and the round trip within B(y) (SP-2 b)."""
    inverse, round_trip = inv_softplus_sweep(device, dtype)
    assert inverse.ok, inverse.report()
    assert round_trip.ok, round_trip.report()


@pytest.mark.claim("SP-2")
@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [(torch.float32, 2.0**-5, 1.0), (torch.float16, 0.0, 65504.0), (torch.bfloat16, 0.0, 3.3895e38)],
    ids=["float32-split", "float16-all", "bfloat16-all"],
)
def test_inv_softplus_every_float(dtype: torch.dtype, lo: float, hi: float) -> None:
    """SP-2 (a) at every float in the range: float16 and bfloat16 over all positive normals, float32 over the five
    binades [2^-5, 1) around Maechler's split at ln 2 (42M values), where the two forms of log(1 - e^-y) meet and a
    misplaced split cancels (a split at 0.1 reaches 1.06 Delta at y = 0.1002, a spot no sampled sweep finds)."""
    worst, y = inv_softplus_exhaustive("cpu", dtype, lo, hi)
    assert worst <= 1.0, f"|x~ - x| = {worst:.4g} Delta at y = {y!r}"


@pytest.mark.claim("SP-2")
def test_bfloat16_counterexample_needs_the_exact_bound() -> None:
    """At y = 2.2877e-30 bfloat16 stores x = -68.25 as -68.0, so softplus(x) moves by e^0.25 - 1 = 0.28:
    above the linearised bound Delta H + 2 eps_c + u_c + u_d that SP-2 used to state, within B(y)."""
    y_t = torch.tensor([2.2877133688586172e-30], dtype=torch.bfloat16)
    y = float(y_t.double())
    x = Fn.inv_softplus(y_t)
    assert float(x.double()) == -68.0  # the storage rounding of x = -68.2461...
    rel = abs(float(Fn.softplus(x).double()) - y) / y
    delta = inv_softplus_error_bound(y, torch.bfloat16)
    eps32, u_bf16 = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps / 2
    linearised = delta * 1.0 + 2 * eps32 + eps32 / 2 + u_bf16  # H <= 1; what a first-order bound allows
    assert rel > linearised, (rel, linearised)
    assert rel <= round_trip_y_bound(y, torch.bfloat16)


@pytest.mark.claim("SP-2")
def test_naive_round_trip_fails_where_ours_holds() -> None:
    """Regression: log(exp(y)-1) turns 1e-8 into 0 and 100 into inf in float32 round trips."""
    y = torch.tensor([1e-8, 100.0], dtype=torch.float32)
    back = Fn.softplus(Fn.inv_softplus(y))
    assert torch.isfinite(back).all()
    rel = ((back.double() - y.double()).abs() / y.double()).tolist()
    # SP-2 (b) at these y (float32): B(y) ~ eps (1.5 |ln y| + 3.5) and ~ 3 eps.
    for r, yv in zip(rel, y.double().tolist()):
        assert r <= round_trip_y_bound(yv, torch.float32)
    naive_y = torch.log(torch.exp(y) - 1)
    assert naive_y[0].item() == -math.inf  # exp(1e-8) - 1 == 0 in float32: the reported defect
    assert naive_y[1].item() == math.inf  # exp(100) overflows


@pytest.mark.claim("SP-3")
@ALL
def test_round_trip_x(dtype: torch.dtype, device: str) -> None:
    assert_check("SP-3", "inv_softplus", device, dtype)


@pytest.mark.parametrize(
    ("fn", "arg"), [(Fn.psi, "psi: t"), (Fn.softplus, "softplus: x"), (Fn.inv_softplus, "inv_softplus: y")],
    ids=["psi", "softplus", "inv_softplus"],
)
def test_non_float_input_raises_type_error(fn: object, arg: str) -> None:
    """The whole message, anchored: it names the function and argument, what is accepted and what arrived."""
    assert callable(fn)
    name = re.escape(arg)
    accepted = r"\(float64, float32, float16 or bfloat16\)"
    with pytest.raises(TypeError, match=rf"^{name}: expected a floating-point tensor {accepted}, got torch\.int64$"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=rf"^{name}: expected a floating-point torch\.Tensor, got list$"):
        fn([1.0])


def test_inv_softplus_domain(device: str) -> None:
    y = torch.tensor([-1.0, 0.0, math.inf, math.nan, 1.0], dtype=torch.float32, device=device)
    out = Fn.inv_softplus(y).cpu().tolist()
    assert math.isnan(out[0]) and out[1] == -math.inf and out[2] == math.inf and math.isnan(out[3])
    assert math.isfinite(out[4])


@pytest.mark.claim("PSI-3", "SP-1", "SP-2")
@ALL
@pytest.mark.parametrize("fn", [Fn.psi, Fn.softplus, Fn.inv_softplus], ids=["psi", "softplus", "inv_softplus"])
def test_result_has_the_input_dtype(fn: object, dtype: torch.dtype) -> None:
    """float16 and bfloat16 are computed in float32 and cast back: the result has the input's dtype, in eager mode
    and under torch.func (vmap runs psi's plain forms), with the same values on both paths."""
    assert callable(fn)
    x = torch.tensor([0.0, 1e-3, 0.5, 1.0, 3.0, 40.0], dtype=dtype)
    eager = fn(x)
    assert eager.dtype == dtype
    mapped = torch.vmap(fn)(x)
    assert mapped.dtype == dtype
    # Both paths evaluate the same formulas on the same float32/float64 values, elementwise: bit for bit equal.
    assert torch.equal(mapped, eager)


@pytest.mark.claim("PSI-3", "PSI-4")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_psi_and_dpsi(dtype: torch.dtype) -> None:
    """The layers' no-autograd pair: psi within PSI-3 of mpmath and psi' = t/(1+t)^2 within PSI-4's gamma_4, both
    ends included (psi(0) = 0, psi(inf) = inf, psi'(0) = psi'(inf) = 0)."""
    points = [1e-12, 1e-6, 0.05, 0.1, 0.3, 1.0, 1.5, 7.0, 1e4, 1e20]  # psi(t) normal: where PSI-3 is stated
    t = torch.tensor([0.0, *points, math.inf], dtype=dtype)
    p, dp = psi_and_dpsi(t)
    assert p.dtype == dtype and dp.dtype == dtype
    assert p[0].item() == 0.0 and p[-1].item() == math.inf
    assert dp[0].item() == 0.0 and dp[-1].item() == 0.0
    for tv, pv, dv in zip(t[1:-1].double().tolist(), p[1:-1].double().tolist(), dp[1:-1].double().tolist()):
        assert rel_err(pv, psi_ref(tv)) <= psi_tol(dtype), (tv, pv)
        assert rel_err(dv, dpsi_ref(tv)) <= psi_grad_tol(dtype), (tv, dv)
        assert 0.0 <= dv <= 0.25


@pytest.mark.claim("PSI-4")
def test_psi_forward_mode() -> None:
    """torch.func.jacfwd (forward mode, which psi's custom autograd node does not implement) runs the plain forms and
    gives psi' = t/(1+t)^2. Tolerance on the direct branch (t > t0) in float64: forward mode computes
    A - B with A = 1/fl(1+t) (relative error 2u) and B = (1 - q)/fl(1+t), q = t/fl(1+t) (q's 2u error grows by
    q/(1-q) = t in 1 - q, plus 3 roundings: 2ut + 3u); relative to psi' = t/(1+t)^2, A = psi' (1+t)/t and
    B = psi'/t, so the error is <= 2u(1+t)/t + (2ut + 3u)/t + u = (5/t + 5) u to first order."""
    ts = [0.2, 0.5, 1.0, 3.0, 10.0, 1e3, 1e8]
    t = torch.tensor(ts, dtype=torch.float64)
    jac = torch.func.jacfwd(Fn.psi)(t)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))).item() == 0  # elementwise
    u = torch.finfo(torch.float64).eps / 2
    for tv, dv in zip(ts, torch.diagonal(jac).tolist()):
        tol = (5 / tv + 5) * u / (1 - 10 * u)
        assert rel_err(dv, dpsi_ref(tv)) <= tol, (tv, dv, tol)


@pytest.mark.claim("SP-1")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_softplus_half_second_derivative(dtype: torch.dtype) -> None:
    """float16/bfloat16 are computed in float32 (SP-1's docstring), so is the second derivative sigmoid(x)(1 -
    sigmoid(x)) that autograd builds, then cast once: within u_d + (k (1 + e^4) + 3) u_32 of the exact value for
    every |x| <= 4 of the dtype (all of them), where k = 4 bounds torch's float32 sigmoid error in units of u_32
    (measured 1.9), 1 - s inherits it times s/(1-s) <= e^4, and the products and the sum round 3 times. Computed in
    the 16-bit dtype itself, 1 - s would carry u_d e^|x| and fail by up to 25x."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = bits[torch.isfinite(bits) & (bits.float().abs() <= 4)].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(Fn.softplus(x).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), x)
    assert g2.dtype == dtype
    s = torch.sigmoid(x.detach().double())
    exact = s * (1 - s)
    u32 = torch.finfo(torch.float32).eps / 2
    tol = torch.finfo(dtype).eps / 2 + (4 * (1 + math.exp(4)) + 3) * u32
    err = (g2.double() - exact).abs() / exact
    worst = int(err.argmax())
    assert err[worst].item() <= tol, (float(x[worst]), err[worst].item(), tol)


@pytest.mark.claim("SP-2")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_inv_softplus_gradient(dtype: torch.dtype) -> None:
    """d inv_softplus/dy = 1/(1 - e^-y) on both sides of ln 2; and where the loss does not use an output (y <= 0,
    inf, NaN) the gradient is exactly 0, not NaN (a NaN there would poison every parameter y depends on).
    Tolerance: the autograd graph forms 1 + e/d with e = e^-y or 1 + expm1(-y) and d = -expm1(-y) or 1 - e^-y
    (one libm call each, <= 2u, and d >= 1/2 or its argument exact by Sterbenz: d within 3u), the divide u and the
    sum of two positives u: <= 7u relative."""
    ln2 = math.log(2.0)
    ys = [1e-30, 1e-6, 0.1, math.nextafter(ln2, 0.0), ln2, math.nextafter(ln2, 1.0), 1.0, 5.0, 30.0, 1e6]
    y = torch.tensor([*ys, -1.0, 0.0, -0.0, math.inf, math.nan], dtype=dtype, requires_grad=True)
    used = len(ys)
    (grad,) = torch.autograd.grad(Fn.inv_softplus(y)[:used].sum(), y)
    assert torch.equal(grad[used:], torch.zeros_like(grad[used:]))
    u = torch.finfo(dtype).eps / 2
    for yv, gv in zip(y.detach()[:used].double().tolist(), grad[:used].double().tolist()):
        with mpmath.workdps(40):
            exact = 1 / -mpmath.expm1(-mpmath.mpf(yv))
        assert rel_err(gv, exact) <= 7 * u, (yv, gv)
