"""R-LayerNorm layers: module conventions, input errors, the closed-form
backward against autograd of a plain float64 formula, compile, jacrev, dtypes, and saved-for-backward bytes.

The theorem checks N0..N10 live in tests/test_norm.py; this file checks the kernel and module machinery.
"""

from __future__ import annotations

import copy
import math
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rln_verified._native import rnorm
from rln_verified._norm import (
    bayesian_r_layer_norm,
    bayesian_r_layer_norm2d,
    noise_ratio,
    r_layer_norm,
    r_layer_norm2d,
)
from rln_verified._norm_formula import group_scale, group_scale_no_frexp, plain_planes
from rln_verified._norm_layers import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified._special import psi
from rln_verified.bench import saved_bytes
from rln_verified.verify.norm import lambda_range, reference_planes

ALL_LAYERS = (RLayerNorm, BayesianRLayerNorm, RLayerNorm2d, BayesianRLayerNorm2d)
BAYES_LAYERS = (BayesianRLayerNorm, BayesianRLayerNorm2d)


def _make(cls: type[nn.Module], **kw: Any) -> nn.Module:
    arg = (4, 6) if cls in (RLayerNorm, BayesianRLayerNorm) else 3
    return cls(arg, **kw)


def _input(cls: type[nn.Module], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, 4, 6) if cls in (RLayerNorm, BayesianRLayerNorm) else (2, 3, 5, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# ---- a plain float64 reference of the formulas (proofs/norm.md definitions), autograd only -----------


def _local_var_mean(xc: torch.Tensor, two_d: bool) -> torch.Tensor:
    """nu: the mean over positions of the variance inside each reflect-padded window (3 or 3x3)."""
    if two_d:
        p = F.pad(xc, (1, 1, 1, 1), mode="reflect")
        win = p.unfold(-2, 3, 1).unfold(-2, 3, 1).flatten(-2)  # (..., H, W, 9)
    else:
        lead = xc.shape[:-1]
        p = F.pad(xc.reshape(-1, 1, xc.shape[-1]), (1, 1), mode="reflect").reshape(*lead, -1)
        win = p.unfold(-1, 3, 1)  # (..., L, 3)
    m = win.mean(-1, keepdim=True)
    local = ((win - m) ** 2).mean(-1)
    dims = (-2, -1) if two_d else (-1,)
    return local.mean(dim=dims, keepdim=True)


def _reference(
    x: torch.Tensor,
    w: torch.Tensor | None,
    b: torch.Tensor | None,
    lam: torch.Tensor,
    eps: float,
    alpha: float,
    bayes: bool,
    two_d: bool,
    group_dims: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(dim=group_dims, keepdim=True)
    xc = x - mu
    v = (xc * xc).mean(dim=group_dims, keepdim=True)
    if two_d:
        nu = _local_var_mean(xc, True)
    else:
        # last-dims: windows run along the last axis only; nu averages over all trailing group dims
        loc = _local_var_mean(xc, False)  # mean over the last axis, keepdim
        nu = loc.mean(dim=group_dims, keepdim=True)
    r = nu / (v + eps)
    t = lam * r
    if bayes:
        f = torch.exp(alpha * psi(t))
        u = -torch.expm1(-2.0 * alpha * psi(t))
    else:
        f = 1.0 + t
        u = torch.zeros_like(t)
    y = xc / (torch.sqrt(v + eps) * f)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, u


# ---- closed-form backward vs autograd of the reference (float64) -----------------------------------


@pytest.mark.parametrize("bayes", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 2, 2), (1, 1, 3, 4), (2, 2, 4, 3)])
def test_2d_matches_reference_and_gradcheck(bayes: bool, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    c = shape[1]
    w = (1.0 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(c, generator=g, dtype=torch.float64)).requires_grad_()
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def ours(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if bayes:
            y, u = bayesian_r_layer_norm2d(x, w, b, lam, 1.3, 1e-5, return_uncertainty=True)
            return y, u
        return (r_layer_norm2d(x, w, b, lam, 1e-5),)

    y_ref, u_ref = _reference(x, w.view(c, 1, 1), b.view(c, 1, 1), lam, 1e-5, 1.3, bayes, True, (-2, -1))
    out = ours(x, w, b, lam)
    # Same formula evaluated two ways in float64: O(M) roundings of size 2^-53 each, M <= 30 here.
    torch.testing.assert_close(out[0], y_ref, rtol=0, atol=1e-12)
    if bayes:
        torch.testing.assert_close(out[1], u_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(ours, (x, w, b, lam), eps=1e-6, atol=1e-7, rtol=1e-6)

    # Backward against autograd of the reference, on a random cotangent (incl. one for u).
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    gu = torch.randn(shape[0], c, 1, 1, generator=g, dtype=torch.float64)
    loss = (out[0] * gy).sum() + ((out[1] * gu).sum() if bayes else 0.0)
    ref_loss = (y_ref * gy).sum() + ((u_ref * gu).sum() if bayes else 0.0)
    got = torch.autograd.grad(loss, (x, w, b, lam))
    want = torch.autograd.grad(ref_loss, (x, w, b, lam))
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("bayes", [False, True])
@pytest.mark.parametrize("ns", [(6,), (3, 5), (2,), (3,), (4, 4)])
def test_last_dims_matches_reference_and_gradcheck(bayes: bool, ns: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(2)
    shape = (2, 3, *ns)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1.0 + 0.3 * torch.randn(ns, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(ns, generator=g, dtype=torch.float64)).requires_grad_()
    lam = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    dims = tuple(range(-len(ns), 0))

    def ours(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if bayes:
            y, u = bayesian_r_layer_norm(x, ns, w, b, lam, 0.8, 1e-5, return_uncertainty=True)
            return y, u
        return (r_layer_norm(x, ns, w, b, lam, 1e-5),)

    y_ref, u_ref = _reference(x, w, b, lam, 1e-5, 0.8, bayes, False, dims)
    out = ours(x, w, b, lam)
    torch.testing.assert_close(out[0], y_ref, rtol=0, atol=1e-12)
    if bayes:
        torch.testing.assert_close(out[1], u_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(ours, (x, w, b, lam), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.claim("N0")
def test_noise_ratio_matches_reference() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    v = (xc * xc).mean(dim=(-2, -1), keepdim=True)
    want = _local_var_mean(xc, True) / (v + 1e-5)
    torch.testing.assert_close(noise_ratio(x, 1e-5, True), want, rtol=1e-12, atol=0)
    x1 = torch.randn(4, 9, generator=g, dtype=torch.float64)
    xc1 = x1 - x1.mean(-1, keepdim=True)
    want1 = _local_var_mean(xc1, False) / ((xc1 * xc1).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(noise_ratio(x1, 1e-5, False), want1, rtol=1e-12, atol=0)


# ---- module conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_module_conventions(cls: type[nn.Module]) -> None:
    m = _make(cls, lambda_init=0.3)
    assert set(dict(m.named_parameters())) == {"weight", "bias", "lambda_raw"}
    assert set(m.state_dict()) == {"weight", "bias", "lambda_raw"}
    assert abs(float(m.lambda_.detach()) - 0.3) < 1e-6  # asin/sin round trip in float32
    with pytest.raises(AttributeError):
        m.lambda_ = torch.tensor(0.5)  # type: ignore[misc]
    rep = repr(m)
    assert "eps=1e-05" in rep and "lambda=[0.001, 1.0]" in rep
    nb = _make(cls, bias=False)
    assert nb.bias is None and "bias" not in dict(nb.named_parameters()) and "bias" not in nb.state_dict()
    na = _make(cls, elementwise_affine=False) if cls in (RLayerNorm, BayesianRLayerNorm) else _make(cls, affine=False)
    assert na.weight is None and na.bias is None

    x = _input(cls)
    with torch.no_grad():
        m.weight.uniform_(0.5, 2.0)
        m.bias.uniform_(-1, 1)
        m.lambda_raw.fill_(1.1)
    y = m(x)
    m2 = _make(cls)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), y)
    assert torch.equal(copy.deepcopy(m)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(m))(x), y)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("cls", BAYES_LAYERS)
def test_uncertainty_output(cls: type[nn.Module]) -> None:
    m = _make(cls)
    x = _input(cls)
    y, u = m(x, return_uncertainty=True)
    assert torch.equal(y, m(x))
    assert u.ndim == x.ndim and (u.shape[0], u.shape[1]) == (
        x.shape[0],
        x.shape[1] if cls is BayesianRLayerNorm2d else 5,
    )
    assert (y * u).shape == y.shape
    assert bool(((u >= 0) & (u < 1)).all())


@pytest.mark.claim("N8")
@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_lambda_bounded_and_alive_after_huge_step(cls: type[nn.Module]) -> None:
    m = _make(cls, lambda_min=0.01, lambda_max=0.9)
    x = _input(cls)
    opt = torch.optim.SGD(m.parameters(), lr=1e6)
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).mul(torch.linspace(0, 1, x.shape[-1])).sum().backward()
        opt.step()
        lam = float(m.lambda_.detach())
        lo, hi = lambda_range(0.01, 0.9, torch.float32)  # [0.01, 0.9] up to lambda's float32 rounding (N8)
        assert lo <= lam <= hi
    opt.zero_grad()
    m(x).pow(2).mul(torch.linspace(0, 1, x.shape[-1])).sum().backward()
    assert m.lambda_raw.grad is not None and float(m.lambda_raw.grad) != 0.0


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LAYERS)
@pytest.mark.parametrize(
    "kw",
    [
        {"eps": 0.0},
        {"eps": -1.0},
        {"alpha": -0.1},
        {"lambda_min": 0.5, "lambda_max": 0.5},
        {"lambda_min": -0.1},
        {"lambda_init": 1.0},
        {"lambda_init": 1e-3},
        {"lambda_init": float("nan")},
    ],
)
def test_bad_config(cls: type[nn.Module], kw: dict[str, float]) -> None:
    if "alpha" in kw and cls not in BAYES_LAYERS:
        kw = {**kw}  # alpha is accepted and ignored by the plain layers only if valid; still validated
    with pytest.raises(ValueError):
        _make(cls, **kw)


def test_bad_inputs() -> None:
    m2 = RLayerNorm2d(3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 4, 5, 5\)"):
        m2(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        m2(torch.zeros(3, 5, 5))
    with pytest.raises(ValueError, match=">= 2"):
        m2(torch.zeros(2, 3, 1, 5))
    with pytest.raises(TypeError, match="int64"):
        m2(torch.zeros(2, 3, 5, 5, dtype=torch.int64))
    m1 = BayesianRLayerNorm((4, 6))
    with pytest.raises(ValueError, match=r"\(\*, 4, 6\).*\(2, 6, 4\)"):
        m1(torch.zeros(2, 6, 4))
    with pytest.raises(ValueError):
        RLayerNorm(1)
    with pytest.raises(TypeError):
        r_layer_norm2d(torch.zeros(1, 1, 3, 3, dtype=torch.int32))


# ---- compile, jacrev, dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_jacrev_matches_autograd(cls: type[nn.Module]) -> None:
    m = _make(cls, dtype=torch.float64)
    x = _input(cls, torch.float64)[:1]
    jac = torch.func.jacrev(lambda t: m(t))(x)
    y = m(x.requires_grad_())
    rows = [torch.autograd.grad(y.reshape(-1)[i], x, retain_graph=True)[0] for i in range(y.numel())]
    want = torch.stack(rows).reshape(jac.shape)
    torch.testing.assert_close(jac, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls", [BayesianRLayerNorm, BayesianRLayerNorm2d])
def test_torch_compile(cls: type[nn.Module]) -> None:
    m = _make(cls)
    x = _input(cls).requires_grad_()
    y, u = m(x, return_uncertainty=True)
    (gx,) = torch.autograd.grad((y * y).sum() + u.sum(), x)
    cm = torch.compile(m, backend="aot_eager")
    yc, uc = cm(x, return_uncertainty=True)
    (gxc,) = torch.autograd.grad((yc * yc).sum() + uc.sum(), x)
    # Same kernel traced: float32 reassociation only, a few ulp of O(1) values.
    torch.testing.assert_close(yc, y, rtol=0, atol=8 * torch.finfo(torch.float32).eps)
    torch.testing.assert_close(gxc, gx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ALL_LAYERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_round_trip(cls: type[nn.Module], dtype: torch.dtype) -> None:
    m = _make(cls, dtype=dtype)
    x = _input(cls, dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype and bool(torch.isfinite(y).all())
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert m.weight.grad is not None and m.weight.grad.dtype == dtype
    # Agreement with the float64 layer on the same (rounded) input: the result is rounded once to `dtype`
    # after float32 stats, |y| <= sqrt(M-1) ~ 5.5, so 6 ulp(1) of `dtype` covers output rounding.
    m64 = _make(cls, dtype=torch.float64)
    ref = m64(x.detach().double())
    tol = 6 * 5.5 * torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e-5
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=tol)


@pytest.mark.claim("N2")
@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_fp16_max_does_not_overflow(cls: type[nn.Module]) -> None:
    m = _make(cls, dtype=torch.float16)
    x = _input(cls, torch.float64)
    x = torch.where(x > 0, 65504.0, -65504.0).to(torch.float16)
    y = m(x)
    assert bool(torch.isfinite(y).all())
    ref = _make(cls, dtype=torch.float64)(x.double())
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=6 * 5.5 * torch.finfo(torch.float16).eps)
    if cls in (BayesianRLayerNorm, BayesianRLayerNorm2d):
        _, u = m(x, return_uncertainty=True)
        assert bool(torch.isfinite(u).all())


@pytest.mark.claim("N2")
def test_torch_layer_norm_failures_are_fixed() -> None:
    """torch's F.layer_norm gives zeros or NaN on these float32 rows; the layer and the functional form match the
    float64 formula of verify.norm.reference_planes (the independent reference, scaled by powers of two)."""
    for vals in ([1e20, -1e20, 0.0, 3e19], [3e38, -3e38, 0.0, 1.0]):
        x = torch.tensor([vals], dtype=torch.float32)
        torch_out = F.layer_norm(x, (4,))
        assert not (torch.isfinite(torch_out).all() and torch_out.abs().sum() > 0)  # the reported defect
        ref, _, _ = reference_planes(x.double().reshape(1, 1, 4), 1e-5, 1.0, 0.5, True, False)
        ref_plain, _, _ = reference_planes(x.double().reshape(1, 1, 4), 1e-5, 0.0, 0.5, False, False)
        ours = BayesianRLayerNorm(4)(x)
        assert bool(torch.isfinite(ours).all())
        torch.testing.assert_close(ours.double(), ref.reshape(1, 4), rtol=0, atol=1e-5)
        y = r_layer_norm(x, (4,), lambda_=torch.tensor(0.5))
        assert bool(torch.isfinite(y).all())
        torch.testing.assert_close(y.double(), ref_plain.reshape(1, 4), rtol=0,
                                   atol=16 * torch.finfo(torch.float32).eps)


# ---- memory: bytes saved for backward, exact count ----------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "base", "shape"),
    [
        (BayesianRLayerNorm2d(16), nn.GroupNorm(16, 16), (8, 16, 16, 16)),
        (RLayerNorm2d(16), nn.GroupNorm(16, 16), (8, 16, 16, 16)),
        (BayesianRLayerNorm(128), nn.LayerNorm(128), (8, 32, 128)),
        (RLayerNorm(128), nn.LayerNorm(128), (8, 32, 128)),
    ],
    ids=["B2d", "R2d", "B", "R"],
)
def test_saved_bytes_ratio(ours: nn.Module, base: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, requires_grad=True)
    mine = saved_bytes(ours, x)
    theirs = saved_bytes(base, x)
    # Target: <= 1.1x torch's bytes; the input itself plus per-group scalars only.
    assert mine <= 1.1 * theirs, (mine, theirs)
    assert mine >= x.numel() * x.element_size()  # the input is saved (recomputation), nothing bigger


@pytest.mark.claim("N3")
@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", [0.75, 1e200, -1e300, 1.7976931348623157e308], ids=["1", "1e200", "-1e300", "max"])
def test_huge_constant_group_gradient_on_every_path(cls: type[nn.Module], value: float) -> None:
    """N3's other side in float64 at every magnitude: a constant group's Jacobian is diag(gamma) P / sqrt(eps)
    exactly, through the eager backward, torch.func (the plain formula) and a double-backward graph alike. Above
    ~2^503 eps s^2 underflows float64, and a kernel that forms 1/sigma from the scaled group gives s/sqrt(tiny)."""
    two_d = cls in (RLayerNorm2d, BayesianRLayerNorm2d)
    m = cls(2 if two_d else (2, 3), dtype=torch.float64)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    shape = (1, 2, 2, 3) if two_d else (1, 2, 3)
    x = torch.full(shape, value, dtype=torch.float64)

    def first(t: torch.Tensor) -> torch.Tensor:
        y = m(t)
        return (y[0] if isinstance(y, tuple) else y).flatten()

    # Exact Jacobian of one group (6 elements): diag(gamma) (I - 11^T/6) / sqrt(eps), independent of the value.
    gamma = m.weight.detach().reshape(-1)
    gamma = gamma.repeat_interleave(6) if two_d else gamma
    proj = torch.eye(6, dtype=torch.float64) - 1.0 / 6
    exact = (torch.diag(gamma[:6]) @ proj) / (1e-5**0.5)
    jac_eager = torch.autograd.functional.jacobian(first, x).reshape(x.numel(), x.numel())[:6, :6]
    jac_func = torch.func.jacrev(first)(x).reshape(x.numel(), x.numel())[:6, :6]
    xg = x.clone().requires_grad_()
    y = first(xg)
    rows = [torch.autograd.grad(y[i], xg, create_graph=True)[0].flatten()[:6] for i in range(6)]
    jac_graph = torch.stack(rows)
    # A few float64 roundings of 1/sqrt(eps) and of gamma P: 64 u_64 relative, far below any wrong scale.
    tol = 64 * 2.0**-53 * float(exact.abs().max())
    for name, jac in (("eager", jac_eager), ("torch.func", jac_func), ("create_graph", jac_graph)):
        assert torch.allclose(jac, exact, rtol=0.0, atol=tol), (name, float((jac - exact).abs().max()))


# ---- the functional forms: defaults, argument checks, dtypes (the norm module's mutation selection) ------------

_FUNCTIONALS: dict[str, tuple[Callable[..., Any], bool, bool]] = {
    "r_layer_norm": (r_layer_norm, False, False),
    "bayesian_r_layer_norm": (bayesian_r_layer_norm, True, False),
    "r_layer_norm2d": (r_layer_norm2d, False, True),
    "bayesian_r_layer_norm2d": (bayesian_r_layer_norm2d, True, True),
}


def _functional(name: str, x: torch.Tensor, ns: tuple[int, ...], *args: Any, **kw: Any) -> Any:
    fn, _, two_d = _FUNCTIONALS[name]
    return fn(x, *args, **kw) if two_d else fn(x, ns, *args, **kw)


def _ref_for(name: str, x: torch.Tensor, ns: tuple[int, ...], w: torch.Tensor | None, b: torch.Tensor | None,
             lam: float, eps: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    _, bayes, two_d = _FUNCTIONALS[name]
    if two_d:
        c = x.shape[1]
        return _reference(x, None if w is None else w.view(c, 1, 1), None if b is None else b.view(c, 1, 1),
                          torch.tensor(lam, dtype=x.dtype), eps, alpha, bayes, True, (-2, -1))
    dims = tuple(range(-len(ns), 0))
    return _reference(x, w, b, torch.tensor(lam, dtype=x.dtype), eps, alpha, bayes, False, dims)


# Input shapes: a batch, none, and the edge sizes the shape checks allow (last dim 2; H = 2, W = 2, C = 1).
_F_CASES = [
    ("r_layer_norm", (2, 3, 6), (6,)),
    ("r_layer_norm", (3, 5), (3, 5)),
    ("bayesian_r_layer_norm", (2, 3, 5), (3, 5)),
    ("bayesian_r_layer_norm", (4, 2), (2,)),
    ("r_layer_norm2d", (2, 1, 2, 3), ()),
    ("bayesian_r_layer_norm2d", (1, 3, 3, 2), ()),
]


@pytest.mark.parametrize(("name", "shape", "ns"), _F_CASES)
def test_functional_defaults_and_arguments_match_float64_reference(name: str, shape: tuple[int, ...],
                                                                   ns: tuple[int, ...]) -> None:
    """The functional forms against the plain float64 formula: with their documented defaults (lambda_ = 0.5,
    eps = 1e-5, alpha = 1, no affine, y alone), and with every argument given (a Python float lambda_ means a
    tensor of x's dtype). Same formula evaluated two ways in float64: O(M) roundings of 2^-53, M <= 30 here."""
    _, bayes, two_d = _FUNCTIONALS[name]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    aff = (shape[1],) if two_d else ns
    w = 1.0 + 0.3 * torch.randn(aff, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(aff, generator=g, dtype=torch.float64)

    y = _functional(name, x, ns)
    assert isinstance(y, torch.Tensor)  # return_uncertainty defaults to False
    y_ref, u_ref = _ref_for(name, x, ns, None, None, 0.5, 1e-5, 1.0 if bayes else 0.0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)

    kw: dict[str, Any] = {"lambda_": 0.3, "eps": 1e-3}
    if bayes:
        kw |= {"alpha": 0.7, "return_uncertainty": True}
    out = _functional(name, x, ns, w, b, **kw)
    y_ref, u_ref = _ref_for(name, x, ns, w, b, 0.3, 1e-3, 0.7 if bayes else 0.0)
    got_y = out[0] if bayes else out
    torch.testing.assert_close(got_y, y_ref, rtol=0, atol=1e-12)
    if len(shape) > len(ns) or two_d:
        # torch.func takes the plain formula (rnorm_planes' torch.func branch): vmap over the batch, the same values.
        vm = torch.func.vmap(lambda t: _functional(name, t.unsqueeze(0), ns, w, b, **kw))(x)
        for a, e in zip(vm if bayes else (vm,), out if bayes else (out,), strict=True):
            torch.testing.assert_close(a.reshape(e.shape), e, rtol=0, atol=1e-12)
    if bayes:
        lead = shape[: len(shape) - len(ns)] if not two_d else shape[:2]
        assert out[1].shape == (*lead, *([1] * (len(ns) if not two_d else 2)))
        torch.testing.assert_close(out[1], u_ref.reshape(out[1].shape), rtol=0, atol=1e-12)
        y_only, u_default = _functional(name, x, ns, return_uncertainty=True)
        torch.testing.assert_close(y_only, _functional(name, x, ns), rtol=0, atol=0)
        assert bool((u_default > 0).all())  # alpha = 1 and r > 0 on random data: u > 0 (N6)


@pytest.mark.parametrize(("name", "shape", "ns"), _F_CASES)
def test_functional_dtype_contract(name: str, shape: tuple[int, ...], ns: tuple[int, ...]) -> None:
    """float16 is computed in float32 and rounded once to float16 (y and u in x's dtype); the affine parameters
    and a tensor lambda_ are cast to the compute dtype, so float64 ones give exactly the float32 result."""
    _, bayes, two_d = _FUNCTIONALS[name]
    g = torch.Generator().manual_seed(5)
    x = torch.randn((3, *shape), generator=g).to(torch.float16)
    x = x.reshape(shape[0] * 3, *shape[1:]) if len(shape) > len(ns) else x
    aff = (x.shape[1],) if two_d else ns
    w = 1.0 + 0.3 * torch.randn(aff, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(aff, generator=g, dtype=torch.float64)
    kw: dict[str, Any] = {"lambda_": 0.3, "return_uncertainty": True} if bayes else {"lambda_": 0.3}
    out16 = _functional(name, x, ns, w.half(), b.half(), **kw)
    # A float lambda_ is a tensor of x's dtype (here 0.3 rounded to float16), then computed in float32.
    kw32 = kw | {"lambda_": torch.tensor(0.3, dtype=torch.float16).float()}
    out32 = _functional(name, x.float(), ns, w.half().float(), b.half().float(), **kw32)
    for got, want in zip(out16 if bayes else (out16,), out32 if bayes else (out32,), strict=True):
        assert got.dtype == torch.float16
        assert torch.equal(got, want.half())
    x32 = x.float().requires_grad_()
    lam64 = torch.tensor(0.3, dtype=torch.float64)
    mixed = _functional(name, x32, ns, w, b, **(kw | {"lambda_": lam64}))
    same = _functional(name, x32, ns, w.float(), b.float(), **(kw | {"lambda_": lam64.float()}))
    # The float32 result (fused kernel, statistics in float64) against float64 on the same numbers: x_c rounded once
    # per element in float32 and y rounded to float32, |dy| <= 3 eps32 max(1, |y|max); 8 eps32 leaves a factor 2.
    ref = _functional(name, x32.double(), ns, w.float().double(), b.float().double(),
                      **(kw | {"lambda_": lam64.float().double()}))
    for got, want, r64 in zip(mixed if bayes else (mixed,), same if bayes else (same,), ref if bayes else (ref,),
                              strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
        tol = 8 * torch.finfo(torch.float32).eps * max(1.0, float(r64.abs().max()))
        torch.testing.assert_close(got.double(), r64, rtol=0, atol=tol)
    # One float64 affine tensor beside float32 ones: cast like the others, never handed to the fused kernel's float32
    # boundary (which would raise), and the same float32 result.
    for w_, b_ in ((w.float(), b), (w, b.float())):
        one = _functional(name, x32, ns, w_, b_, **(kw | {"lambda_": lam64.float()}))
        for got, want in zip(one if bayes else (one,), same if bayes else (same,), strict=True):
            assert torch.equal(got, want)
    # float32 on the CPU takes the fused kernel (rnorm_planes' contract), not the eager autograd node.
    if rnorm._kernel_ready():
        for out in (same, _functional(name, x32, ns, **kw)):
            nodes = _graph_nodes(out[0] if bayes else out)
            assert "_NativeFnBackward" in nodes and "_RNormFnBackward" not in nodes, nodes


def _graph_nodes(t: torch.Tensor) -> set[str]:
    names: set[str] = set()
    seen: set[int] = set()
    todo = [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen.add(id(fn))
            names.add(type(fn).__name__)
            todo.extend(nxt for nxt, _ in fn.next_functions)
    return names


def test_functional_argument_errors() -> None:
    x = torch.randn(2, 3, 4, 6)
    for name in ("r_layer_norm", "bayesian_r_layer_norm"):
        fn = _FUNCTIONALS[name][0]
        with pytest.raises(ValueError, match=rf"^{name}: expected input of shape \(\*, 4, 6\) with last dim >= 2, "
                                             r"got \(2, 3, 6, 4\)$"):
            fn(x.transpose(-1, -2), (4, 6))
        with pytest.raises(ValueError, match=rf"^{name}: expected input of shape \(\*, 2, 3, 4, 6\) with last dim "
                                             r">= 2, got \(3, 4, 6\)$"):
            fn(x[0], (2, 3, 4, 6))
        with pytest.raises(ValueError, match=rf"^{name}: expected input of shape \(\*, 1\) with last dim >= 2, "
                                             r"got \(4, 1\)$"):
            fn(torch.zeros(4, 1), 1)
        with pytest.raises(TypeError, match=rf"^{name}: expected a floating-point tensor \(float64, float32, "
                                            r"float16 or bfloat16\), got torch.int64$"):
            fn(torch.zeros(2, 6, dtype=torch.int64), 6)
        with pytest.raises(TypeError, match=rf"^{name}: expected a floating-point torch.Tensor, got list$"):
            fn([[0.0, 1.0]], 2)
    for name in ("r_layer_norm2d", "bayesian_r_layer_norm2d"):
        fn = _FUNCTIONALS[name][0]
        for bad in (x[0], x[:, :, :1], x[:, :, :, :1]):
            with pytest.raises(ValueError, match=rf"^{name}: expected a 4-D input \(N, C, H, W\) with H, W >= 2, "
                                                 rf"got \({', '.join(map(str, bad.shape))}\)$"):
                fn(bad)
        with pytest.raises(TypeError, match=rf"^{name}: expected a floating-point tensor \(float64, float32, "
                                            r"float16 or bfloat16\), got torch.int32$"):
            fn(torch.zeros(1, 1, 3, 3, dtype=torch.int32))
    # A weight or bias of the wrong shape is a ValueError naming it, before any reshape or kernel sees it: the
    # wrong size, and the right size in the wrong layout (a (6, 4) weight for a (4, 6) normalized shape, which a
    # reshape would silently permute), as torch's layer_norm refuses it.
    for name in ("r_layer_norm", "bayesian_r_layer_norm"):
        fn = _FUNCTIONALS[name][0]
        for arg in ("weight", "bias"):
            for bad in (torch.ones(5), torch.ones(6, 4), torch.ones(24)):
                shown = ", ".join(map(str, bad.shape)) + ("," if bad.ndim == 1 else "")
                with pytest.raises(ValueError, match=rf"^{name}: {arg} must have shape \(4, 6\), the normalized "
                                                     rf"shape, got shape \({shown}\)$"):
                    fn(x, (4, 6), **{arg: bad})
    for name in ("r_layer_norm2d", "bayesian_r_layer_norm2d"):
        fn = _FUNCTIONALS[name][0]
        for arg in ("weight", "bias"):
            for bad in (torch.ones(4, 1, 1), torch.ones(1, 3), torch.ones(3, 1)):
                shown = ", ".join(map(str, bad.shape))
                with pytest.raises(ValueError, match=rf"^{name}: {arg} must have shape \(3,\) or \(3, 1, 1\), "
                                                     rf"one per channel, got shape \({shown}\)$"):
                    fn(x, **{arg: bad})
        assert fn(x, torch.ones(3, 1, 1)).shape == x.shape
    for name in _FUNCTIONALS:
        with pytest.raises(ValueError, match=r"^lambda_ must be a number or a one-element tensor, got shape \(2,\)$"):
            _functional(name, x, (6,), lambda_=torch.ones(2))
    # The layers name themselves in their input errors, as the functional forms do.
    for layer in (RLayerNorm(6), BayesianRLayerNorm2d(3)):
        lname = type(layer).__name__
        with pytest.raises(TypeError, match=rf"^{lname}: expected a floating-point torch.Tensor, got list$"):
            layer([[0.0, 1.0]])
        with pytest.raises(TypeError, match=rf"^{lname}: expected a floating-point tensor \(float64, float32, "
                                            r"float16 or bfloat16\), got torch.int32$"):
            layer(torch.zeros(1, 3, 4, 6, dtype=torch.int32))
    # The layers check the channels before the spatial size, as torch's GroupNorm checks C first.
    with pytest.raises(ValueError, match=r"^RLayerNorm2d: expected 3 channels"):
        RLayerNorm2d(3)(torch.randn(2, 4, 1, 6))
    for name in _FUNCTIONALS:
        for bad_lam, shown in ((0.0, "0.0"), (-0.5, "-0.5"), (float("inf"), "inf"), (float("nan"), "nan")):
            with pytest.raises(ValueError, match=rf"^lambda_ must be a positive finite number, got {shown}$"):
                _functional(name, x, (6,), lambda_=bad_lam)
        with pytest.raises(ValueError, match=r"^eps must be > 0, got 0.0$"):
            _functional(name, x, (6,), eps=0.0)
    for name in ("bayesian_r_layer_norm", "bayesian_r_layer_norm2d"):
        with pytest.raises(ValueError, match=r"^alpha must be >= 0, got -0.5$"):
            _functional(name, x, (6,), alpha=-0.5)


@pytest.mark.claim("N0")
def test_noise_ratio_defaults_shapes_and_dtypes() -> None:
    """noise_ratio's defaults (eps = 1e-5, two_d = True), its keepdim shapes ((N, C, 1, 1), or (..., 1) over the last
    dim), float16 computed in float32 and returned in float16, and its input errors."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    want = _local_var_mean(xc, True) / ((xc * xc).mean(dim=(-2, -1), keepdim=True) + 1e-5)
    got = noise_ratio(x)
    assert got.shape == (2, 3, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for shape in ((9,), (4, 9), (2, 4, 9)):
        x1 = torch.randn(shape, generator=g, dtype=torch.float64)
        xc1 = x1 - x1.mean(-1, keepdim=True)
        want1 = _local_var_mean(xc1, False) / ((xc1 * xc1).mean(-1, keepdim=True) + 1e-5)
        got1 = noise_ratio(x1, two_d=False)
        assert got1.shape == (*shape[:-1], 1)
        torch.testing.assert_close(got1, want1, rtol=1e-12, atol=0)
    for two_d, h in ((True, x), (False, x[0, 0])):
        r16 = noise_ratio(h.half(), two_d=two_d)
        assert r16.dtype == torch.float16
        assert torch.equal(r16, noise_ratio(h.half().float(), two_d=two_d).half())
    with pytest.raises(TypeError, match=r"^noise_ratio: expected a floating-point tensor \(float64, float32, float16 "
                                        r"or bfloat16\), got torch.int64$"):
        noise_ratio(torch.zeros(1, 1, 3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^noise_ratio: expected a floating-point torch.Tensor, got list$"):
        noise_ratio([[0.0, 1.0]])  # type: ignore[arg-type]


def _exponent(t: torch.Tensor) -> torch.Tensor:
    """e with t = f 2^e, f in [1/2, 1) (frexp's), as float64."""
    return torch.frexp(t.double())[1].double()


@pytest.mark.claim("N2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_group_scale_no_frexp_contract(dtype: torch.dtype) -> None:
    """group_scale_no_frexp (the ONNX export's scale): per group a power of two s <= 1 with max|x s| < 2, so the
    scaling is exact. Its exponent comes from log2, which may round across a power of two: away from one (group
    maximum at a relative distance > 2^-10 from every power of two, while log2's error is a few ulp of |log2 m| <=
    1075, below 2^-10 / ln 2 in float32 and float64) it is group_scale's exactly, and near one at most one off.
    0, inf and NaN groups get a finite power of two s <= 1 too."""
    fi = torch.finfo(dtype)
    sub = float(torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)))  # smallest subnormal
    peaks = [sub, 8 * sub, fi.tiny, 2.0**-30, 0.3, 0.49, 0.5, 0.75, 1.0, 1.5, 1.9, 2.0, 3.0, 5.0, 1e5, 2.0**100,
             0.7 * fi.max, fi.max]
    near = [float(torch.nextafter(torch.tensor(p, dtype=dtype), torch.tensor(q, dtype=dtype)))
            for p in (0.5, 1.0, 2.0, 4.0, 2.0**60) for q in (0.0, math.inf)]
    groups = []
    for i, m in enumerate(peaks + near):
        sign = -1.0 if i % 2 else 1.0  # every other group has its largest magnitude on the negative side
        vals = torch.tensor([sign * m, -sign * m / 3, 0.0, sign * m / 7, -sign * m / 5, sign * m / 2],
                            dtype=torch.float64)
        groups.append(vals.to(dtype).reshape(2, 3))
    special = [torch.zeros(2, 3, dtype=dtype), torch.full((2, 3), math.inf, dtype=dtype),
               torch.full((2, 3), -math.inf, dtype=dtype), torch.full((2, 3), math.nan, dtype=dtype)]
    x = torch.stack(groups + special)  # (G, 2, 3)
    s = group_scale_no_frexp(x)
    assert s.shape == (x.shape[0], 1, 1) and s.dtype == dtype
    # per group, whatever the batch dims
    assert torch.equal(group_scale_no_frexp(x.reshape(2, -1, 2, 3)), s.reshape(2, -1, 1, 1))
    assert bool((torch.isfinite(s) & (s > 0) & (s <= 1)).all())
    assert bool((torch.frexp(s)[0] == 0.5).all())  # a power of two
    n = len(groups)
    xs = x[:n] * s[:n]
    assert bool((xs.abs().amax(dim=(-2, -1)) < 2).all())
    assert torch.equal(xs / s[:n], x[:n])  # exact: s = 1 for the subnormal groups, and no element becomes subnormal
    e, e_ref = _exponent(s[:n]), _exponent(group_scale(x[:n]))
    gmax = x[:n].abs().amax(dim=(-2, -1), keepdim=True).double()
    mant = torch.frexp(gmax)[0]  # in [1/2, 1): relative distance to the nearest power of two, 2^(e-1) or 2^e
    dist = torch.minimum(2.0 * mant - 1.0, 1.0 / mant - 1.0)
    far = dist > 2.0**-10
    assert bool(far[: len(peaks)].sum() >= 8)
    assert torch.equal(e[far], e_ref[far])
    assert bool(((e - e_ref).abs() <= 1).all())


@pytest.mark.claim("N0", "N2")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("bayes", "two_d"), [(False, False), (True, False), (False, True), (True, True)])
def test_plain_formula_matches_reference(bayes: bool, two_d: bool, dtype: torch.dtype) -> None:
    """plain_planes (the formula torch.func and double backward differentiate) against the float64 reference, y and
    u in x's dtype, with either scale (frexp or log2: y is invariant to the power of two s, N2), a per-channel or
    elementwise affine, and constant groups (huge, and 0) beside random ones, whose centred values must be exactly 0
    (y = bias, N2). The tensors it makes follow x's device, whatever the default device."""
    g = torch.Generator().manual_seed(7)
    p, l_ = 3, 5
    x64 = torch.randn(3, 2, p, l_, generator=g, dtype=torch.float64)
    x64[1, 0] = 1e200 if dtype == torch.float64 else 1e30  # constant groups in the same batch as random ones
    x64[2, 1] = 0.0
    x64 = x64.to(dtype).double()  # the reference sees exactly the input
    shape = (2, 1, 1) if two_d else (p, l_)
    w = (1.0 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).double()
    b = (0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).double()
    lam = torch.tensor(0.7, dtype=torch.float64)
    if two_d:
        y_ref, u_ref = _reference(x64, w, b, lam, 1e-5, 1.3, bayes, True, (-2, -1))
    else:
        # last-dims groups: windows along L only; nu averages the P rows' local variances
        xc = x64 - x64.mean(dim=(-2, -1), keepdim=True)
        v = (xc * xc).mean(dim=(-2, -1), keepdim=True)
        nu = _local_var_mean(xc, False).mean(dim=(-2, -1), keepdim=True)
        t = lam * nu / (v + 1e-5)
        f = torch.exp(1.3 * psi(t)) if bayes else 1.0 + t
        y_ref = xc / (torch.sqrt(v + 1e-5) * f) * w + b
        u_ref = -torch.expm1(-2.6 * psi(t)) if bayes else torch.zeros_like(t)
    # float64: the same formula two ways, O(M) roundings of 2^-53 of O(1) values, M = 15. float32 (statistics in
    # float64): x s - mean rounded once per element in float32, then y rounded to float32: |dy| <= 2 eps32 |y|max
    # + eps32 |y|; 8 eps32 max(1, |y|max) covers both with a factor 2.
    tol = 1e-12 if dtype == torch.float64 else 8 * torch.finfo(torch.float32).eps * max(1.0, float(y_ref.abs().max()))
    x, lam_c = x64.to(dtype), lam.to(dtype)
    for no_frexp in (False, True):
        y, u = plain_planes(x, w.to(dtype), b.to(dtype), lam_c, 1e-5, 1.3, bayes, two_d, no_frexp=no_frexp)
        assert y.dtype == u.dtype == dtype and u.shape == (3, 2, 1, 1)
        torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=tol)
        torch.testing.assert_close(u.double(), u_ref, rtol=0, atol=tol)
        for n, c in ((1, 0), (2, 1)):
            assert torch.equal(y[n, c], (b[c] if two_d else b).to(dtype).expand(p, l_))
    with torch.device("meta"):
        y_meta_default, _ = plain_planes(x, w.to(dtype), b.to(dtype), lam_c, 1e-5, 1.3, bayes, two_d)
    assert y_meta_default.device == x.device
    torch.testing.assert_close(y_meta_default, y, rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda c: c.__name__)
def test_config_errors_name_the_argument(cls: type[nn.Module]) -> None:
    """Every configuration number must be a finite real (not a bool), and the error names it; the bounds' own
    errors are exact at their edges: eps > 0, alpha >= 0, 0 <= lambda_min < lambda_max, lambda_init strictly inside."""
    for name in ("eps", "alpha", "lambda_init", "lambda_min", "lambda_max"):
        for bad in (math.nan, math.inf, True, "0.1"):
            with pytest.raises(ValueError, match=rf"^{name} must be a finite real number, got {re.escape(repr(bad))}$"):
                _make(cls, **{name: bad})
    with pytest.raises(ValueError, match=r"^eps must be > 0, got 0.0$"):
        _make(cls, eps=0.0)
    with pytest.raises(ValueError, match=r"^alpha must be >= 0, got -0.5$"):
        _make(cls, alpha=-0.5)
    _make(cls, alpha=0.0, lambda_min=0.0, lambda_init=0.25, lambda_max=0.5)  # the closed edges are allowed
    for lo, hi in ((0.5, 0.5), (-0.1, 0.5)):
        with pytest.raises(ValueError, match=rf"^lambda bounds must satisfy 0 <= lambda_min < lambda_max, got "
                                             rf"\[{lo!r}, {hi!r}\]$"):
            _make(cls, lambda_min=lo, lambda_max=hi, lambda_init=0.3)
    for init in (0.1, 0.6):
        with pytest.raises(ValueError, match=rf"^lambda_init must lie in the open interval \(0.1, 0.6\), got {init}$"):
            _make(cls, lambda_min=0.1, lambda_max=0.6, lambda_init=init)


def test_jit_trace_of_float64_functional_matches_eager() -> None:
    """torch.jit.trace of a float64 call (no fused kernel there) records the plain formula, never a Python autograd
    node: the trace replayed on a new input gives the eager y and u, to float64 reassociation (O(M) roundings of
    2^-53, M = 20)."""
    g = torch.Generator().manual_seed(8)
    x, x2 = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    w = 1.0 + 0.3 * torch.randn(3, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(3, generator=g, dtype=torch.float64)

    def f(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, u = bayesian_r_layer_norm2d(t, w, b, 0.3, 0.8, 1e-4, return_uncertainty=True)
        return y, u

    traced = torch.jit.trace(f, (x,), check_trace=False)  # type: ignore[no-untyped-call]
    assert "PythonOp" not in str(traced.graph)
    for got, want in zip(traced(x2), f(x2), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(_FUNCTIONALS))
def test_functional_forward_mode_jacobian(name: str) -> None:
    """torch.func.jacfwd (forward mode, which the autograd nodes do not implement) through each argument alone
    (x, weight, bias, lambda) takes the plain formula and equals the reverse-mode Jacobian of the eager call."""
    _, bayes, two_d = _FUNCTIONALS[name]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64)
    ns = (3, 4)
    aff = (2,) if two_d else ns
    w = 1.0 + 0.3 * torch.randn(aff, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(aff, generator=g, dtype=torch.float64)
    lam = torch.tensor(0.4, dtype=torch.float64)

    def f(*args: torch.Tensor) -> torch.Tensor:
        kw = {"return_uncertainty": True} if bayes else {}
        out = _functional(name, args[0], ns, args[1], args[2], args[3], **kw)
        y: torch.Tensor = out[0] + out[1] if bayes else out
        return y

    args = (x, w, b, lam)
    want = torch.autograd.functional.jacobian(f, args)  # type: ignore[no-untyped-call]
    for i in range(4):
        got = torch.func.jacfwd(lambda t, i=i: f(*args[:i], t, *args[i + 1:]))(args[i])
        # float64 Jacobians of the same formula by two modes: entries O(1/sigma) = O(1), O(M) roundings of 2^-53.
        torch.testing.assert_close(got, want[i], rtol=0, atol=1e-12)


def _affine_or_not(cls: type[nn.Module], affine: bool) -> tuple[nn.Module, list[str]]:
    """A float64 layer with random affine parameters and lambda, or one without affine; its parameter names."""
    if affine:
        m = _make(cls, dtype=torch.float64)
    elif cls in (RLayerNorm, BayesianRLayerNorm):
        m = _make(cls, dtype=torch.float64, elementwise_affine=False)
    else:
        m = _make(cls, dtype=torch.float64, affine=False)
    with torch.no_grad():
        if affine:
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-1, 1)
        m.lambda_raw.fill_(0.7)
    return m, [n for n, _ in m.named_parameters()]


@pytest.mark.claim("N3")
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda c: c.__name__)
def test_float64_eager_backward_matches_autograd_of_the_formula(cls: type[nn.Module], affine: bool) -> None:
    """The hand-written float64 backward (the eager kernel's autograd node) against autograd of the plain formula
    (torch.func.grad, which runs plain_planes): dL/dx, dL/dweight, dL/dbias and dL/dlambda_raw of L = sum(c y)
    (+ sum(c' u) for the Bayesian layers), at shapes whose planes have reflect edges on both axes, with random
    affine parameters and lambda.

    Tolerance: both sides are float64 evaluations of the same derivative in a different order; each gradient entry is
    a sum over at most M = 30 terms of products of O(1) factors (x is O(1), sigma >= 0.5 here), so they agree to
    ~4 M u64 = 1.3e-14 of the gradient's scale; 1e-12 leaves room and is 10^4 times below a weight of the
    reflect-edge reuse factors (2/3, 4/3) rounded to float32 (relative 3e-8)."""
    torch.manual_seed(0)
    m, names = _affine_or_not(cls, affine)
    x = _input(cls, torch.float64)
    bayes = cls in (BayesianRLayerNorm, BayesianRLayerNorm2d)
    c = torch.randn_like(x)
    params = tuple(getattr(m, n).detach() for n in names)

    def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, ps, strict=True))
        if bayes:
            y, u = torch.func.functional_call(m, state, (xx,), {"return_uncertainty": True})
            return (c * y).sum() + (u * u.shape[-1]).sum() * 0.3
        out: torch.Tensor = torch.func.functional_call(m, state, (xx,))
        return (c * out).sum()

    leaves = tuple(t.clone().requires_grad_() for t in (x, *params))
    got = torch.autograd.grad(loss(*leaves), leaves)
    want = torch.func.grad(loss, argnums=tuple(range(len(leaves))))(x, *params)
    for name, g, w in zip(["x", *names], got, want, strict=True):
        scale = float(w.abs().max())
        assert scale > 0 and float((g - w).abs().max()) <= 1e-12 * scale, (name, float((g - w).abs().max()), scale)


@pytest.mark.claim("N3")
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda c: c.__name__)
def test_float64_double_backward_matches_torch_func(cls: type[nn.Module], affine: bool) -> None:
    """A backward asked to build a graph (create_graph, as gradient penalties do) recomputes the plain formula's VJP:
    its first derivatives in x, weight, bias and lambda_raw must equal autograd's of the formula (torch.func.grad),
    and a Hessian-vector product through them must equal torch.func's (jvp of grad). Same tolerance and reasoning
    as the first-order test above (float64, the same sums in another order): 1e-12 of the scale."""
    torch.manual_seed(1)
    m, names = _affine_or_not(cls, affine)
    x = _input(cls, torch.float64)
    bayes = cls in (BayesianRLayerNorm, BayesianRLayerNorm2d)
    c = torch.randn_like(x)
    params = tuple(getattr(m, n).detach() for n in names)
    dirs = tuple(torch.randn_like(t) for t in (x, *params))

    def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, ps, strict=True))
        if bayes:
            y, u = torch.func.functional_call(m, state, (xx,), {"return_uncertainty": True})
            return (c * y).sum() + 0.3 * u.sum()
        out: torch.Tensor = torch.func.functional_call(m, state, (xx,))
        return (c * out).sum()

    leaves = tuple(t.clone().requires_grad_() for t in (x, *params))
    grads = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)
    hv = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)), leaves,
                             allow_unused=True, materialize_grads=True)
    g_ref, h_ref = torch.func.jvp(torch.func.grad(loss, argnums=tuple(range(len(leaves)))), (x, *params), dirs)
    labels = [f"{k}{n}" for k in ("d", "h") for n in ("x", *names)]
    for name, got, want in zip(labels, (*grads, *hv), (*g_ref, *h_ref), strict=True):
        scale = float(want.abs().max()) + 1e-300
        assert float((got - want).abs().max()) <= 1e-12 * max(scale, 1e-6), (name, float((got - want).abs().max()))


@pytest.mark.parametrize("frozen", ["weight", "bias", "lambda_raw"])
@pytest.mark.parametrize("cls", ALL_LAYERS, ids=lambda c: c.__name__)
def test_a_frozen_parameter_leaves_the_other_gradients_intact(cls: type[nn.Module], frozen: str) -> None:
    """With one parameter frozen (requires_grad False: fine-tuning), the float64 backward still gives every other
    parameter and the input its gradient, equal to autograd's of the formula (torch.func.grad; 1e-12 of the scale,
    as in the tests above)."""
    torch.manual_seed(2)
    m, names = _affine_or_not(cls, True)
    getattr(m, frozen).requires_grad_(False)
    x = _input(cls, torch.float64).requires_grad_()
    c = torch.randn_like(x)
    live = [n for n in names if n != frozen]
    got = torch.autograd.grad((c * m(x)).sum(), [x, *(getattr(m, n) for n in live)])
    params = {n: getattr(m, n).detach() for n in names}

    def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = {**params, **dict(zip(live, ps, strict=True))}
        out: torch.Tensor = torch.func.functional_call(m, state, (xx,))
        return (c * out).sum()

    want = torch.func.grad(loss, argnums=tuple(range(1 + len(live))))(x.detach(), *(params[n] for n in live))
    for name, g, w in zip(["x", *live], got, want, strict=True):
        assert float((g - w).abs().max()) <= 1e-12 * (float(w.abs().max()) + 1e-300), name


@pytest.mark.parametrize("cls", [BayesianRLayerNorm, BayesianRLayerNorm2d], ids=lambda c: c.__name__)
def test_eager_float32_u_is_float32(cls: type[nn.Module]) -> None:
    """On the eager path (the C kernel switched off) a float32 layer returns y and u in float32, though its per-group
    statistics are float64. It matches the fused kernel's u: both compute u in float64 (N11's error, 2^-46 (M+8)
    (1 + A/sigma), is far below float32's resolution here) and round it once to float32, so they differ by at most
    a float32 ulp of u <= 1, 2^-23; 2^-20 leaves room."""
    m = _make(cls)
    x = _input(cls)
    with rnorm.disabled():
        y, u = m(x, return_uncertainty=True)
    assert y.dtype == torch.float32 and u.dtype == torch.float32
    if rnorm.available():
        _, u_fused = m(x, return_uncertainty=True)
        assert float((u - u_fused).abs().max()) <= 2.0**-20


@pytest.mark.skipif(not rnorm.available(), reason=f"the fused kernel is not in use here: {rnorm.reason()}")
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls", [RLayerNorm, BayesianRLayerNorm, RLayerNorm2d, BayesianRLayerNorm2d],
                         ids=lambda c: c.__name__)
def test_float32_layer_is_one_fused_node_on_its_parameters(cls: type[nn.Module], affine: bool) -> None:
    """A float32 CPU layer calls the fused kernel on its input as given, its raw lambda parameter (the kernel maps it
    to lambda and back, N8) and its affine as stored: y's graph is one fused node whose inputs are the parameters
    themselves, with no reshape or lambda node in between."""
    m = _make(cls) if affine else cls((4, 6) if cls in (RLayerNorm, BayesianRLayerNorm) else 3,
                                      **({"elementwise_affine": False} if cls in (RLayerNorm, BayesianRLayerNorm)
                                         else {"affine": False}))
    x = _input(cls).requires_grad_()
    y = m(x)
    assert type(y.grad_fn).__name__ == "_NativeFnBackward"
    leaves = {id(fn.variable) for fn, _ in y.grad_fn.next_functions if hasattr(fn, "variable")}
    assert {id(p) for p in m.parameters()} <= leaves and id(x) in leaves


@pytest.mark.claim("N2")
@pytest.mark.parametrize("cls", [RLayerNorm2d, BayesianRLayerNorm2d], ids=lambda c: c.__name__)
@pytest.mark.parametrize("eps", [1e-38, 1e-42])
def test_tiny_groups_with_a_tiny_eps_on_every_float32_path(cls: type[nn.Module], eps: float) -> None:
    """N2 with an eps at or below float32's smallest normal and groups of size 1e-20, whose variance (1e-40) is
    subnormal in float32: the per-group statistics must be float64 on the eager path as in the fused kernel, or
    v + eps is lost to float32's subnormal range (y off by O(1)). Both paths against the float64 formula, within
    N2's tolerance (verify.norm.n2_tolerance)."""
    from rln_verified.verify.norm import n2_tolerance

    torch.manual_seed(0)
    m = cls(3, eps=eps)
    x = (torch.randn(2, 3, 6, 6, dtype=torch.float64) * 1e-20).float()
    alpha = 1.0 if cls is BayesianRLayerNorm2d else 0.0
    ref, _, _ = reference_planes(x.double(), eps, alpha, float(m.lambda_.detach()), alpha > 0, True)
    ref = ref.reshape(x.shape)
    tol = n2_tolerance(x.double().reshape(6, 36), ref.reshape(6, 36), 36, alpha, torch.float32, eps).reshape(x.shape)
    with torch.no_grad():
        with rnorm.disabled():
            y_eager = m(x)
        y_fused = m(x)
    for y in (y_eager, y_fused):
        assert bool(((y.double() - ref).abs() <= tol).all()), float((y.double() - ref).abs().max())


def test_noise_ratio_names_a_too_small_input() -> None:
    """noise_ratio needs a window of three along each normalized dim (reflect padding of a 2-wide dim is the
    smallest): a last dim (or H) of 1, or a 2d call on a 1-D input, is a ValueError saying so, not an indexing error
    from inside the window sums."""
    from rln_verified.functional import noise_ratio

    for bad in (torch.randn(3, 1), torch.randn(2, 3, 1, 5), torch.randn(2, 3, 5, 1), torch.randn(5)):
        with pytest.raises(ValueError, match=r"^noise_ratio: two_d needs maps of at least 2 x 2"):
            noise_ratio(bad)
    with pytest.raises(ValueError, match=r"^noise_ratio: needs a last dim of at least 2, got shape \(4, 1\)$"):
        noise_ratio(torch.randn(4, 1), two_d=False)
    assert noise_ratio(torch.randn(4, 2), two_d=False).shape == (4, 1)
    assert noise_ratio(torch.randn(2, 3, 2, 2)).shape == (2, 3, 1, 1)


def test_a_non_finite_lambda_raw_gives_nan_on_every_path() -> None:
    """An optimizer that diverges can leave lambda_raw at inf or NaN. Every path then returns NaN (lambda = lo + (hi -
    lo)(1 + sin raw)/2 is NaN), where the fused float32 path raised math's 'math domain error' from math.sin."""
    cases = ((BayesianRLayerNorm, (2, 8)), (RLayerNorm2d, (2, 3, 8, 8)), (BayesianRLayerNorm2d, (2, 3, 5, 6)))
    for cls, shape in cases:
        for dt in (torch.float32, torch.float64):
            m = cls(shape[-1] if cls is BayesianRLayerNorm else 3).to(dt)
            for bad in (math.inf, -math.inf, math.nan):
                m.lambda_raw.data.fill_(bad)
                assert m(torch.randn(*shape, dtype=dt)).isnan().all(), (cls.__name__, dt, bad)


def test_attributes_set_after_construction_are_checked_at_the_call() -> None:
    """eps, alpha and the lambda bounds are read on every call, so they are checked there with the constructor's
    rules: eps = 0 gave NaN for a constant group and alpha < 0 a u below 0; now each is a ValueError naming the
    layer. A valid change takes effect."""
    x = torch.randn(2, 3, 6, 6)
    for attr, bad, msg in (("eps", 0.0, "eps must be > 0"), ("eps", -1e-5, "eps must be > 0"),
                           ("alpha", -1.0, "alpha must be >= 0"), ("eps", math.nan, "eps must be a finite"),
                           ("lambda_min", 2.0, "lambda bounds must satisfy")):
        m = BayesianRLayerNorm2d(3)
        setattr(m, attr, bad)
        with pytest.raises(ValueError, match=rf"^BayesianRLayerNorm2d: {msg}.*set after construction\)$"):
            m(x)
    m = BayesianRLayerNorm2d(3)
    y0 = m(x)
    m.eps = 1e-2
    assert not torch.equal(m(x), y0)
