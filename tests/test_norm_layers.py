"""R-LayerNorm layers (issue 3, implementation half): module conventions, input errors, the closed-form
backward against autograd of a plain float64 formula, compile, jacrev, dtypes, and saved-for-backward bytes.

The theorem checks N0..N10 live in tests/test_norm.py; this file checks the kernel and module machinery.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rln_verified._layers import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified._rnorm import (
    bayesian_r_layer_norm,
    bayesian_r_layer_norm2d,
    noise_ratio,
    r_layer_norm,
    r_layer_norm2d,
)
from rln_verified._special import psi
from rln_verified.verify.norm import lambda_range

ALL_LAYERS = (RLayerNorm, BayesianRLayerNorm, RLayerNorm2d, BayesianRLayerNorm2d)
BAYES_LAYERS = (BayesianRLayerNorm, BayesianRLayerNorm2d)


def _make(cls: type[nn.Module], **kw: Any) -> nn.Module:
    arg = (4, 6) if cls in (RLayerNorm, BayesianRLayerNorm) else 3
    return cls(arg, **kw)


def _input(cls: type[nn.Module], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, 4, 6) if cls in (RLayerNorm, BayesianRLayerNorm) else (2, 3, 5, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# ---- a plain float64 reference of the formulas (issue 3 definitions), autograd only ------------------


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
    assert abs(float(m.lambda_.detach()) - 0.3) < 1e-6  # asin/sin round trip in float32
    with pytest.raises(AttributeError):
        m.lambda_ = torch.tensor(0.5)  # type: ignore[misc]
    rep = repr(m)
    assert "eps=1e-05" in rep and "lambda=[0.001, 1.0]" in rep
    nb = _make(cls, bias=False)
    assert nb.bias is None and "bias" not in dict(nb.named_parameters())
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


@pytest.mark.claim("N2")
def test_torch_layer_norm_failures_are_fixed() -> None:
    for vals in ([1e20, -1e20, 0.0, 3e19], [3e38, -3e38, 0.0, 1.0]):
        x = torch.tensor([vals], dtype=torch.float32)
        y = r_layer_norm(x, (4,), lambda_=torch.tensor(0.5))
        x64 = torch.tensor([vals], dtype=torch.float64)
        ref = r_layer_norm(x64, (4,), lambda_=torch.tensor(0.5, dtype=torch.float64))
        assert bool(torch.isfinite(y).all())
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=16 * torch.finfo(torch.float32).eps)


# ---- memory: bytes saved for backward, exact count ----------------------------------------------------


def _saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


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
    mine = _saved_bytes(ours, x)
    theirs = _saved_bytes(base, x)
    # Target (issue 5): <= 1.1x; the input itself plus per-group scalars only.
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
