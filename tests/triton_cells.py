"""The Triton kernels of the R-LayerNorm operators (rln_verified/_native/rnorm_triton.py) and of the ReLU moments
(rln_verified/_native/gauss_triton.py) under Triton's interpreter.

Not collected by the main run: ``tests/test_triton.py`` runs this file in one subprocess with ``TRITON_INTERPRET=1``
(Triton decides at import whether its kernels are compiled or interpreted), so the kernels run on CPU tensors. The
bound is N11's, through the same harness as the C kernel (``test_native._margins``): the Triton kernels keep every sum
and per-group scalar in float64 and round once to float32, which is all N11's proof uses (proofs/norm.md).
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, target
from test_native import LARGE_ALPHA_PSI, _margins, cases, large_alpha_psi_margin, n11_examples

import rln_verified.verify.gaussian as vg
from rln_verified._native import gauss, gauss_triton, rnorm, rnorm_triton
from rln_verified._native.rnorm import PlaneConfig
from rln_verified.verify._core import round_to
from rln_verified.verify._margins import fold, has_nan

if os.environ.get("TRITON_INTERPRET") != "1" or not rnorm_triton.available():
    pytest.skip("run by tests/test_triton.py with TRITON_INTERPRET=1 and triton installed", allow_module_level=True)


def _config(shape: tuple[int, ...], two_d: bool, w: torch.Tensor | None, bayes: bool, alpha: float) -> PlaneConfig:
    p, l_ = (shape[-2], shape[-1]) if two_d else (math.prod(shape[1:-1]), shape[-1])
    mode = 0 if w is None else (1 if two_d else 2)
    return PlaneConfig(None, 1.0, 1e-5, alpha, bayes, two_d, mode, p, l_)


def _run_triton(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, lam: torch.Tensor, alpha: float,
                bayes: bool, two_d: bool, gy: torch.Tensor, gu: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The test_native runner's outputs, from the operators' CUDA kernels (here: the interpreted Triton kernels)."""
    if w is None and b is not None:  # a bias alone: a unit weight, as the layers' dispatch (_norm._fused) gives it
        w = torch.ones_like(b)
    cfg = _config(tuple(x.shape), two_d, w, bayes, alpha)
    assert rnorm_triton.usable(x, two_d, cfg.p, cfg.l)
    wf = w.reshape(-1) if (w is not None and not two_d) else w
    bf = b.reshape(-1) if (b is not None and not two_d) else b
    y, u, stats = rnorm.cuda_forward(x, wf, bf, lam, *cfg)
    assert bool((stats[:, 1] != 0).all()), "the Triton forward saves 1/sigma per group (the plain branch saves zeros)"
    gx, g_w, g_b, g_l = rnorm.cuda_backward(x, wf, lam, stats, gy, gu.reshape(-1) if bayes else None, *cfg,
                                            w is not None, b is not None)
    ushape = (*x.shape[:2], 1, 1) if two_d else (x.shape[0],) + (1,) * (x.dim() - 1)
    zero = torch.zeros(())
    return (y, (u if bayes else torch.zeros_like(u)).reshape(ushape), gx,
            g_w.reshape(w.shape) if w is not None else zero, g_b.reshape(b.shape) if b is not None else zero, g_l)


@pytest.mark.claim("N11")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@n11_examples
def test_triton_kernels_match_float64_formula(case: dict[str, Any]) -> None:
    margin = _margins(case, _run_triton)
    target(margin, label="N11 error / bound (Triton)")
    assert margin <= 1.0, margin


@pytest.mark.claim("N11")
@pytest.mark.parametrize(("alpha", "lam"), LARGE_ALPHA_PSI)
def test_triton_huge_inflation_keeps_y_relative_accuracy(alpha: float, lam: float) -> None:
    margin = large_alpha_psi_margin(alpha, lam, _run_triton)
    assert margin <= 1.0, margin


def test_triton_branch_is_taken_and_large_planes_take_the_formula() -> None:
    """The CUDA kernels take the Triton branch wherever ``usable`` says so (real per-group stats), and the plain
    formula above MAX_M (zero stats); both give the float64 formula's values to N11's float32 rounding."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 0, 4, 4)
    assert rnorm_triton.usable(x, True, 4, 4)
    y, _, stats = rnorm.cuda_forward(x, None, None, lam, *cfg)
    assert bool((stats[:, 1] > 0).all())
    big = torch.randn(1, rnorm_triton.MAX_M + 2)
    cfg_big = PlaneConfig(None, 1.0, 1e-5, 1.0, True, False, 0, 1, rnorm_triton.MAX_M + 2)
    assert not rnorm_triton.usable(big, False, 1, rnorm_triton.MAX_M + 2)
    y_big, _, stats_big = rnorm.cuda_forward(big, None, None, lam, *cfg_big)
    assert bool((stats_big == 0).all())
    for inp, out, c in ((x, y, cfg), (big, y_big, cfg_big)):
        ref, _ = rnorm.plain(inp.double(), None, None, lam.double(), c)
        assert float((out.double() - ref).abs().max()) <= 2.0**-23 * float(ref.abs().max()) + 1e-30


@pytest.mark.claim("N9")
def test_nan_and_inf_stay_in_their_group() -> None:
    x = torch.randn(3, 2, 4, 4)
    x[1, 0, 2, 2] = math.nan
    x[2, 1, 0, 0] = math.inf
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 0, 4, 4)
    y, u, stats = rnorm.cuda_forward(x, None, None, lam, *cfg)
    bad = torch.zeros(3, 2, dtype=torch.bool)
    bad[1, 0] = bad[2, 1] = True
    assert bool(torch.isfinite(y[~bad]).all()) and bool(torch.isfinite(u.reshape(3, 2)[~bad]).all())
    assert not bool(torch.isfinite(y[bad]).any())
    gy = torch.randn_like(x)
    gx, _, _, _ = rnorm.cuda_backward(x, None, lam, stats, gy, torch.ones(6), *cfg, False, False)
    assert bool(torch.isfinite(gx[~bad]).all())


def test_the_checks_before_the_kernel() -> None:
    """Wrong dtypes, sizes and devices are refused before a Triton pointer is formed, as before a C one."""
    x = torch.randn(2, 3, 4, 4)
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 1, 4, 4)
    with pytest.raises(TypeError, match=r"must be torch\.float32"):
        rnorm.cuda_forward(x.double(), torch.ones(3), None, lam, *cfg)
    with pytest.raises(ValueError, match="weight has 2 elements, expected 3"):
        rnorm.cuda_forward(x, torch.ones(2), None, lam, *cfg)
    with pytest.raises(ValueError, match="bias must have 3 elements"):
        rnorm.cuda_forward(x, torch.ones(3), torch.ones(2), lam, *cfg)
    with pytest.raises(ValueError, match="lambda must have 1 elements"):
        rnorm.cuda_forward(x, torch.ones(3), None, torch.ones(2), *cfg)


# ---- RELU-6: the ReLU moments' Triton kernels (rln_verified/_native/gauss_triton.py) ------------------------------
#
# The metric of RELU-6's registered check (rln_verified/verify/gaussian.py::_relu_fused), with the Triton kernels in
# the C kernel's place: the moments and four partials within 1 float32 ulp of the eager kernel's (RELU-6 (3)) and,
# for |a| <= 1e3 and sigma > 0, within RELU-4's and RELU-5's float32 bounds at a of the 90-digit references
# (RELU-6 (2)). The Triton kernels perform gauss.c's float64 operations in its order and round once to float32, which
# is all RELU-6's proof uses (proofs/gaussian.md, RELU-6, the Triton paragraph).

_CPU = torch.device("cpu")


def _relu_triton(mu: float, s: float) -> list[float]:
    """(mean, var, dmean/dmu, dmean/dsigma, dvar/dmu, dvar/dsigma) from the operators' CUDA kernels (here the
    interpreted Triton kernels): one forward of two copies, whose backward takes dL/d(mean, var) = (1, 0) and (0, 1)."""
    m = torch.tensor([mu, mu], dtype=torch.float32)
    sg = torch.tensor([s, s], dtype=torch.float32)
    assert gauss_triton.usable(m)
    mean, var, aux = gauss.relu_moments_cuda(m, sg)
    g_mu, g_s = gauss.relu_moments_bwd_cuda(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), m, sg, aux)
    return [float(t.double()) for t in (mean[0], var[0], g_mu[0], g_s[0], g_mu[1], g_s[1])]


def _relu6_margin(case: Any) -> float:
    mu, s = (round_to(float(v), torch.float32) for v in case)
    got = _relu_triton(mu, s)
    with gauss.disabled():  # the eager float64 kernel, rounded once to float32
        eager = vg._relu_values_and_partials(mu, s, _CPU)
    if has_nan(got, eager):
        return math.inf  # every case is finite with sigma >= 0: RELU-2 and RELU-5 promise finite values
    ulp_margin = fold([vg.f32_ulps(g, e) for g, e in zip(got, eager, strict=True)])
    if s == 0 or abs(mu / s) > 1e3:
        return ulp_margin  # outside RELU-4's |a| <= 1e3; sigma = 0 is RELU-3's, pinned by (3)
    a = mu / s
    want = [*vg.relu_moments_ref(mu, s), *vg.relu_grads_ref(mu, s)]
    tols = [vg.relu_tol_at(a, torch.float32)] * 2 + [vg.relu_grad_tol(a, torch.float32)] * 4
    return fold(ulp_margin, vg._accuracy_margin(got, want, tols))


def _pin_relu6(fn: Any) -> Any:
    """RELU-6's own pins (verify/gaussian.py::_relu_fused_examples): both sides of each branch switch of gauss.c (the
    tail at a = -4.5, phi's flush below 2^-1022 at |a| = 37.5, the clamp at 40), sigma = 0, sigma at float32's ends,
    |mu|/sigma far past 1e3."""
    for case in reversed(vg._relu_fused_examples(torch.float32)):
        fn = example(case=case)(fn)
    return fn


@pytest.mark.claim("RELU-6")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=vg._relu_fused_cases(torch.float32))
@example(case=(-4.5, 1.0))  # tests/test_gaussian.py's pins: the tail switch,
@example(case=(-37.6e20, 1e20))  # a deep tail with a huge sigma (phi's power-of-two bookkeeping),
@example(case=(40e-20, 1e-20))  # the clamp of a with a tiny sigma
@example(case=(-60.0, 1.0))  # the tail past the clamp: phi = Q = 0 in aux
@example(case=(-2.0 * 2.0**-149, 2.0**-149))  # subnormal sigma
@example(case=(-1e38, 1e-38))  # a = -1e76: the continued fraction at x far past float32
@example(case=(3.4e38, 2.0**-149))  # a = +huge: mean = mu
@example(case=(0.0, 0.0))  # sigma = 0 and mu = 0
@_pin_relu6
def test_relu_triton_within_relu6(case: Any) -> None:
    margin = _relu6_margin(case)
    target(margin, label="RELU-6 error / bound (Triton)")
    assert margin <= 1.0, (case, margin)


@pytest.mark.claim("RELU-6", "RELU-2", "RELU-3")
def test_relu_triton_branch_grid_and_lengths() -> None:
    """The branch grid of tests/test_gaussian.py (every branch switch, float32's sigmas, NaN, inf, sigma = 0 and
    sigma < 0) in one launch of several blocks: moments and gradients (random upstream gradients) within 1 ulp of the
    eager kernel's, NaN exactly where those are NaN; moments >= 0 (RELU-2). Then lengths around the block size."""
    from test_gaussian import _relu_both, _relu_grid, _ulps_apart

    mu, sigma = _relu_grid()
    g = torch.Generator().manual_seed(5)
    gm, gv = torch.randn(mu.shape, generator=g), torch.randn(mu.shape, generator=g)
    assert mu.numel() > 2 * gauss_triton.BLOCK
    mean, var, aux = gauss.relu_moments_cuda(mu, sigma)
    g_mu, g_s = gauss.relu_moments_bwd_cuda(gm, gv, mu, sigma, aux)
    eager = _relu_both(mu, sigma, gm, gv, False)
    for name, got, want in zip(("mean", "var", "dmu", "dsigma"), (mean, var, g_mu, g_s), eager, strict=True):
        d = _ulps_apart(got, want)
        i = int(torch.argmax(d))
        assert float(d[i]) <= 1.0, (name, float(d[i]), float(mu[i]), float(sigma[i]), float(got[i]), float(want[i]))
    ok = ~(torch.isnan(mu) | torch.isnan(sigma) | (sigma < 0))
    assert bool((mean[ok] >= 0).all()) and bool((var[ok] >= 0).all())
    for n in (0, 1, gauss_triton.BLOCK - 1, gauss_triton.BLOCK, gauss_triton.BLOCK + 1, 3 * gauss_triton.BLOCK + 5):
        gen = torch.Generator().manual_seed(n)
        m = torch.randn(n, 2, generator=gen)[:, 0] * 6  # a strided view
        s = torch.rand(n, generator=gen) + 0.05
        a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        mean, var, aux = gauss.relu_moments_cuda(m, s)
        assert aux.shape == (gauss.NAUX * n,) and aux.dtype == torch.float64
        outs = (mean, var, *gauss.relu_moments_bwd_cuda(a, b, m, s, aux))
        for got, want in zip(outs, _relu_both(m.contiguous(), s, a, b, False), strict=True):
            assert got.shape == (n,) and float(torch.cat([_ulps_apart(got, want), torch.zeros(1)]).max()) <= 1.0, n


def test_relu_triton_branch_is_taken_and_checks_come_first() -> None:
    """The CUDA kernels take the Triton branch under the interpreter (aux holds phi(|a|) and Q(|a|); the plain branch
    leaves zeros), the aux layout is gauss.c's, and wrong dtypes, shapes and devices are refused before a Triton
    pointer is formed."""
    mu = torch.tensor([0.5, -1.0, -6.0, 3.0])
    s = torch.tensor([1.0, 2.0, 1.0, 0.5])
    assert gauss_triton.usable(mu) and gauss_triton.NAUX == gauss.NAUX
    mean, _, aux = gauss.relu_moments_cuda(mu, s)
    planes = aux.reshape(gauss.NAUX, 4)
    assert bool((planes[1] > 0).all()) and bool((planes[2] > 0).all())
    assert torch.equal(planes[0].float(), mean)
    if gauss.available():  # the C kernel writes the same planes (one float64 rounding apart at most)
        _, _, aux_c = gauss.forward_raw(mu, s)
        assert bool(((aux - aux_c).abs() <= 2.0**-50 * aux_c.abs()).all()), (aux, aux_c)
    with pytest.raises(TypeError, match=r"must be torch\.float32"):
        gauss.relu_moments_cuda(mu.double(), s.double())
    with pytest.raises(ValueError, match="shape"):
        gauss.relu_moments_cuda(mu, s[:2])
    with pytest.raises(ValueError, match="aux must be"):
        gauss.relu_moments_bwd_cuda(mu, mu, mu, s, aux[:3])
    with pytest.raises(ValueError, match="aux must be"):
        gauss.relu_moments_bwd_cuda(mu, mu, mu, s, aux.float())
    with pytest.raises(ValueError, match="aux is on meta"):
        gauss.relu_moments_bwd_cuda(mu, mu, mu, s, aux.to("meta"))
    with pytest.raises(ValueError, match="shape"):
        gauss.relu_moments_bwd_cuda(mu[:2], mu, mu, s, aux)
