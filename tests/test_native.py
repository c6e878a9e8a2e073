"""The fused float32 CPU kernel (rln_verified/_native/rnorm.py) against the float64 formula: theorem N11.

The bounds below are N11's (proofs/norm.md): the kernel rounds once to float32 at the end, so its error is
``(u32 + 2^-40)|ref|`` plus a float64-sized term ``2^-46 (n + 8)^k (1 + A/sigma) S``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import example, given, target
from hypothesis import strategies as st

import rln_verified as rv
from rln_verified._native import rnorm, toolchain
from rln_verified._norm import bayesian_r_layer_norm, bayesian_r_layer_norm2d, r_layer_norm, r_layer_norm2d
from rln_verified.verify import assert_check
from rln_verified.verify.norm import N11_EXPM1_LANE_TOL, N11_PSI_LANE_TOL, N11_PSI_SCALAR_TOL

U32 = 2.0**-24 + 2.0**-40
TINY = 2.0**-150  # rounding into float32's subnormal range is off by up to half its spacing 2^-149

# The tests below compare the kernel with its reference, so they need it. Whether it should be here is the next
# test's question, which is never skipped for its absence. Under RLN_VERIFIED_REQUIRE_NATIVE=1 (make test, where a
# compiler exists) a kernel that fails to build raises already here, at collection.
needs_kernel = pytest.mark.skipif(
    not rnorm.available(), reason=f"the fused kernel is not in use here: {rnorm.reason()}"
)


def test_kernel_is_in_use_where_a_compiler_exists() -> None:
    # CI machines have a C compiler; the fused kernel must then be the one the float32 layers run.
    if toolchain.off_by_request() and not toolchain.required():
        pytest.skip("RLN_VERIFIED_NATIVE=0: the kernel is off by request")
    try:
        toolchain.compiler()
    except RuntimeError:
        if not toolchain.required():
            pytest.skip("no C compiler here")
    assert rnorm.available(), rnorm.reason()
    x = torch.randn(2, 3, 4, 5)
    lam = torch.tensor(0.5)
    assert rnorm.usable(x, None, None, lam, 0, 4, 5)
    with rnorm.disabled():
        assert not rnorm.usable(x, None, None, lam, 0, 4, 5)
    assert not rnorm.usable(x.double(), None, None, lam, 0, 4, 5)


def _run(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, lam: torch.Tensor, alpha: float,
         bayes: bool, two_d: bool, gy: torch.Tensor, gu: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(y, u, dL/dx, dL/dw, dL/db, dL/dlambda) for L = sum(y gy) + sum(u gu), through the functional forms."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b, lam)]
    xs, ws, bs, ls = leaves
    assert xs is not None and ls is not None
    if two_d:
        if bayes:
            y, u = bayesian_r_layer_norm2d(xs, ws, bs, ls, alpha, 1e-5, return_uncertainty=True)
        else:
            y, u = r_layer_norm2d(xs, ws, bs, ls, 1e-5), torch.zeros(gu.shape, dtype=x.dtype)
    else:
        ns = tuple(x.shape[1:])
        if bayes:
            y, u = bayesian_r_layer_norm(xs, ns, ws, bs, ls, alpha, 1e-5, return_uncertainty=True)
        else:
            y, u = r_layer_norm(xs, ns, ws, bs, ls, 1e-5), torch.zeros(gu.shape, dtype=x.dtype)
    loss = (y * gy.to(y.dtype)).sum() + ((u * gu.to(u.dtype)).sum() if bayes else 0.0)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(loss, inputs)
    it = iter(grads)
    full = [next(it) if t is not None else None for t in leaves]
    return (y.detach(), u.detach(), *[g if g is not None else torch.zeros(()) for g in full])


@st.composite
def cases(draw: Any) -> dict[str, Any]:
    two_d = draw(st.booleans())
    p = draw(st.integers(2, 6)) if two_d else draw(st.integers(1, 3))
    l_ = draw(st.sampled_from([2, 3, 4, 5, 7, 8, 16, 19, 24, 32]))  # 8: the row-vector planes; 8k: the strips
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (n, c, p, l_) if two_d else (n, p, l_)
    size = math.prod(shape)
    scale = 2.0 ** draw(st.integers(-140, 120))
    offset = draw(st.sampled_from([0.0, 1.0, 1e4, 1e20]))
    vals = draw(st.lists(st.floats(-4, 4, width=32), min_size=size, max_size=size))
    return {"two_d": two_d, "shape": shape, "scale": scale, "offset": offset, "vals": vals,
            "bayes": draw(st.booleans()), "affine": draw(st.sampled_from(["none", "weight", "both", "bias"])),
            "alpha": draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
            "lam": draw(st.floats(0.0010000000474974513, 1.0, width=32)),
            "seed": draw(st.integers(0, 2**16))}


def _pin(two_d: bool, shape: tuple[int, ...], vals: list[float], scale: float = 1.0, offset: float = 0.0,
         **kw: Any) -> dict[str, Any]:
    size = math.prod(shape)
    base = {"two_d": two_d, "shape": shape, "scale": scale, "offset": offset, "vals": (vals * size)[:size],
            "bayes": True, "affine": "both", "alpha": 1.0, "lam": 0.5, "seed": 0}
    base.update(kw)
    return base


Runner = Callable[..., tuple[torch.Tensor, ...]]


def _margins(case: dict[str, Any], run: Runner = _run) -> float:
    """Largest ratio |kernel - float64 formula| / N11 bound over y, u and every gradient; ``run`` computes the
    kernel's values (by default through the functional forms, so float32 on the CPU: the C kernel)."""
    two_d, shape = case["two_d"], case["shape"]
    x32 = (torch.tensor(case["vals"], dtype=torch.float64).reshape(shape) * case["scale"] + case["offset"])
    x32 = x32.clamp(-3e38, 3e38).float()
    g = torch.Generator().manual_seed(case["seed"])
    k = shape[1] if two_d else shape[1:]
    kshape = (k,) if two_d else tuple(k)
    w = (1 + 0.5 * torch.randn(kshape, generator=g)) if case["affine"] in ("weight", "both") else None
    b = 0.3 * torch.randn(kshape, generator=g) if case["affine"] in ("both", "bias") else None
    lam = torch.tensor(case["lam"], dtype=torch.float32)
    gy = torch.randn(shape, generator=g)
    ushape = (*shape[:2], 1, 1) if two_d else shape[:1] + (1,) * (len(shape) - 1)
    gu = torch.randn(ushape, generator=g)
    alpha, bayes = case["alpha"], case["bayes"]
    got = run(x32, w, b, lam, alpha, bayes, two_d, gy, gu)
    d = [t.double() if t is not None else None for t in (x32, w, b, lam)]
    ref = _run(d[0], d[1], d[2], d[3], alpha, bayes, two_d, gy.double(), gu.double())  # type: ignore[arg-type]

    # group statistics of the float64 input, per element
    xd = x32.double()
    dims = (-2, -1) if two_d else tuple(range(1, len(shape)))
    m = math.prod(shape[-2:]) if two_d else math.prod(shape[1:])
    mean = xd.mean(dim=dims, keepdim=True)
    sigma = torch.sqrt(((xd - mean) ** 2).mean(dim=dims, keepdim=True) + 1e-5)
    a_max = xd.abs().amax(dim=dims, keepdim=True)
    amp = 1 + a_max / sigma
    wmax = float(w.abs().max()) if w is not None else 1.0
    wel = (w.double().reshape((1, -1, 1, 1) if two_d else (1, *kshape)) if w is not None
           else torch.ones((), dtype=torch.float64))
    ratios = []

    def bound(name: str, err: torch.Tensor, tol: torch.Tensor) -> None:
        r = float((err / (tol + TINY)).max()) if err.numel() else 0.0
        assert math.isfinite(r) or not torch.isfinite(err).all(), name
        ratios.append(r if math.isfinite(r) else math.inf)

    y, u, gx, gw, gb, gl = got
    yr, ur, gxr, gwr, gbr, glr = ref
    bound("y", (y.double() - yr).abs(), U32 * yr.abs() + wel.abs() * 2.0**-46 * (m + 8) * amp)
    bound("u", (u.double() - ur).abs(), U32 * ur.abs() + 2.0**-46 * (m + 8) * amp.reshape(ur.shape))
    s_x = (wmax * gy.double().abs().amax(dim=dims, keepdim=True) + alpha * case["lam"] * gu.double().abs()) / sigma
    bound("dx", (gx.double() - gxr).abs(), U32 * gxr.abs() + 2.0**-46 * (m + 8) ** 2 * amp * s_x)
    n_all = x32.numel()
    amp_all = float(amp.max())
    xhat = ((xd - mean) / sigma).abs()
    gyd = gy.double().abs()
    if w is not None:
        red = (0, 2, 3) if two_d else (0,)
        s_w = (gyd * xhat).sum(dim=red).reshape(kshape)
        bound("dw", (gw.double() - gwr).abs(), U32 * gwr.abs() + 2.0**-46 * (n_all + 8) ** 2 * amp_all * s_w)
    if b is not None:
        red = (0, 2, 3) if two_d else (0,)
        s_b = gyd.sum(dim=red).reshape(kshape)
        bound("db", (gb.double() - gbr).abs(), U32 * gbr.abs() + 2.0**-46 * (n_all + 8) ** 2 * s_b)
    s_l = float((gyd * wel.abs() * xhat).sum() + 2 * gu.double().abs().sum())
    bound("dlambda", (gl.double() - glr).abs(), U32 * glr.abs() + 2.0**-46 * (n_all + 8) ** 2 * amp_all * s_l)
    return max(ratios)


#: N11's pinned inputs, the known-bad cases of a fused kernel (the C kernel's and the Triton kernels' tests use them).
N11_PINS = [
    _pin(True, (2, 3, 4, 5), [1.0]),  # constant groups
    _pin(True, (2, 2, 4, 4), [1.0, -1.0]),  # alternating signs
    _pin(True, (1, 2, 5, 5), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0]),  # spikes
    _pin(True, (1, 2, 3, 4), [1.0, -1.0, 0.5, 0.25], scale=3e38 / 1.0),  # float32 max
    _pin(True, (1, 2, 2, 3), [1.0, -0.5, 0.25], scale=2.0**-140),  # subnormals
    _pin(False, (2, 3, 6), [0.5, -0.5, 0.0], offset=1e6),  # huge offset
    _pin(False, (2, 1, 2), [1.0, 2.0]),  # the smallest window
    _pin(False, (3, 2, 7), [1.0, -1.0, 2.0], bayes=False, affine="none"),
    # long rows take the 5-tap form of B^T B with computed pads (rnorm.c, pad5): spikes on the end rows and columns
    _pin(True, (1, 2, 4, 16), [9.0] + [0.0] * 14 + [-5.0] + [0.0] * 32 + [3.0] + [0.0] * 14 + [2.0]),
    _pin(True, (1, 1, 5, 17), [0.0, 4.0] + [0.0] * 14 + [2.0, -1.0]),
    _pin(False, (2, 2, 16), [7.0, -3.0] + [0.0] * 12 + [1.0, 5.0]),
    _pin(True, (1, 2, 3, 3), [2.0, -1.0, 0.0], alpha=3.0, lam=1.0),  # the n = 3 reuse weights, 5/3 in the middle
    # rows of 8 are one vector with shuffled window sums, rows of 8k go in 8-column strips (rnorm.c): spikes in the
    # reflected lanes of the end rows and columns, the fewest rows each path takes, and huge offsets
    _pin(True, (1, 2, 5, 8), [6.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 3.0] + [0.0] * 24 + [1.0] + [0.0] * 6 + [4.0]),
    _pin(True, (2, 1, 2, 8), [1.0, -1.0, 0.5, 0.0, 2.0, 0.0, 0.0, -3.0], offset=1e4),
    # planes of width 8: 2 or 3 rows take bwd8, 4 or more the strips' one-vector rows (box8_adj(box8(.)))
    _pin(True, (1, 2, 3, 8), [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, -4.0, 0.0] + [0.0] * 8 + [2.0] + [0.0] * 6 + [1.0]),
    _pin(True, (1, 1, 6, 8), [0.0, -6.0] + [0.0] * 36 + [3.0, 0.0] + [0.0] * 6 + [0.5]),
    _pin(True, (1, 2, 4, 24), [5.0] + [0.0] * 22 + [-7.0] + [0.0] * 48 + [2.0] + [0.0] * 22 + [1.0]),
    _pin(True, (1, 1, 3, 16), [0.25, -0.5, 1.0], offset=1e4, bayes=False),
    _pin(True, (2, 2, 4, 8), [1.0, -1.0, 0.5, 0.25], scale=3e38 / 1.0),  # float32 max in the vector paths
    _pin(False, (2, 1, 32), [6.0, 0.0, -1.0] + [0.0] * 28 + [4.0]),
    _pin(False, (1, 2, 24), [0.5, -0.5, 0.0], offset=1e6),
    _pin(False, (2, 1, 8), [3.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0, -5.0], affine="weight"),
    _pin(True, (2, 2, 3, 8), [2.0, -1.0, 0.0, 0.5], affine="bias"),  # a bias alone: the kernel with a unit weight
    _pin(False, (2, 2, 5), [2.0, -1.0, 0.0, 0.5], affine="bias", bayes=False),
    # a 2d plane above 2048 elements: the strips' backward in two walks (smaller planes take one), spikes on the
    # rows and columns next to each edge
    _pin(True, (1, 1, 48, 48), [4.0 if (i // 48 in (1, 46) or i % 48 in (1, 46)) and i % 7 == 0 else 0.0
                                for i in range(48 * 48)]),
]


#: (alpha, lambda) where f = exp(alpha psi(lambda r)) is huge (alpha psi ~20 to ~110): y tiny, but a normal float32
LARGE_ALPHA_PSI = [(40.0, 9.0), (25.0, 9.0), (250.0, 0.99), (1.0, 5e29)]


def large_alpha_psi_margin(alpha: float, lam: float, run: Runner | None = None) -> float:
    """Largest |kernel - float64 formula| / bound over y and dL/dx of a Bayesian 2d layer at a huge f, with the bound
    in y's own scale: the final rounding, u32 |y_ref|, plus the float64 statistics' error carried through f. N11's
    proof gives r = nu/(v + eps) an absolute error of at most (M + 8) 2^-46 (1 + A/sigma) (the same term as u's), and
    d log f / dr = alpha lambda psi'(t) (PSI-4: psi'(t) = t/(1 + t)^2), so y - beta and dL/dx move by at most
    (1 + alpha lambda psi'(t)) times that, relative (the 1 for sigma, a and the scalar steps). A kernel that formed
    a = (1 + expm1(-alpha psi))/sigma lost exp(-alpha psi) below 2^-53: y = 0 where the formula's y is 3.6e-22 (N11's
    absolute term |gamma| delta, which does not shrink with 1/f, let that through)."""
    from rln_verified._norm_formula import group_stats

    g = torch.Generator().manual_seed(0)
    shape = (4, 2, 16, 16)
    x = torch.randn(shape, generator=g)
    gy, gu = torch.randn(shape, generator=g), torch.randn(4, 2, 1, 1, generator=g)
    w, b = 1 + 0.5 * torch.randn(2, generator=g), torch.zeros(2)
    lam32 = torch.tensor(lam)  # the reference takes the same float32 lambda (0.99 rounds; f moves ~55x its rounding)
    got = (run or _run)(x, w, b, lam32, alpha, True, True, gy, gu)
    ref = _run(x.double(), w.double(), b.double(), lam32.double(), alpha, True, True, gy.double(), gu.double())
    xd = x.double()
    mean = xd.mean(dim=(-2, -1), keepdim=True)
    sigma = torch.sqrt(((xd - mean) ** 2).mean(dim=(-2, -1), keepdim=True) + 1e-5)
    t = float(lam32) * group_stats(xd, 1e-5, True)["r"]
    sens = alpha * float(lam32) * t / (1 + t) ** 2
    stat = (1 + sens) * (16 * 16 + 8) * 2.0**-46 * (1 + xd.abs().amax(dim=(-2, -1), keepdim=True) / sigma)
    y, gx, yr, gxr = got[0].double(), got[2].double(), ref[0], ref[2]
    assert bool((yr.abs() > 2.0**-126).all()), "the case must keep y a normal float32"
    r_y = (y - yr).abs() / ((U32 + stat) * yr.abs())
    r_g = (gx - gxr).abs() / (U32 * gxr.abs() + stat * gxr.abs().amax(dim=(-2, -1), keepdim=True) + TINY)
    return max(float(r_y.max()), float(r_g.max()))


def n11_examples(test: Callable[..., None]) -> Callable[..., None]:
    """``@example`` of every case in :data:`N11_PINS`."""
    for case in reversed(N11_PINS):
        test = example(case)(test)
    return test


@needs_kernel
@pytest.mark.claim("N11")
@given(cases())
@n11_examples
def test_fused_kernel_matches_float64_formula(case: dict[str, Any]) -> None:
    margin = _margins(case)
    target(margin, label="N11 error / bound")
    assert margin <= 1.0, margin


@needs_kernel
@pytest.mark.claim("N11")
@pytest.mark.parametrize("layer", ["RLayerNorm", "BayesianRLayerNorm", "RLayerNorm2d", "BayesianRLayerNorm2d"])
def test_fused_layers_match_float64_layers(layer: str) -> None:
    """N11 through the layers, as the registered check ``N11/<layer>`` (rln_verified/verify/norm.py, which
    ``rln-verify`` runs too): y, u and every gradient (lambda's through its raw parameter) within N11's bound of the
    float64 layer with the same parameters. The test above checks the functional forms (lambda given directly)."""
    assert_check("N11", layer, "cpu", torch.float32)


@needs_kernel
@pytest.mark.claim("N11")
def test_a_bias_without_weight_takes_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The functional forms take a bias without a weight; the fused kernel runs them with a unit weight (they once
    fell back to the eager float32 path, whose gradients are ~50x less accurate than N11's)."""
    calls = []
    real = rnorm._run_forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rnorm, "_run_forward", counted)
    x, b = torch.randn(3, 4, 5, 16), torch.randn(4)
    y = bayesian_r_layer_norm2d(x, None, b, torch.tensor(0.5), 1.0, 1e-5)
    assert len(calls) == 1
    assert torch.equal(y, bayesian_r_layer_norm2d(x, torch.ones(4), b, torch.tensor(0.5), 1.0, 1e-5))
    y2 = r_layer_norm(x, (5, 16), None, torch.randn(5, 16), torch.tensor(0.5), 1e-5)
    assert len(calls) == 3 and y2.shape == x.shape


@needs_kernel
@pytest.mark.claim("N11")
@pytest.mark.parametrize(("alpha", "lam"), LARGE_ALPHA_PSI)
def test_huge_inflation_keeps_y_relative_accuracy(alpha: float, lam: float) -> None:
    margin = large_alpha_psi_margin(alpha, lam)
    assert margin <= 1.0, margin


@needs_kernel
@pytest.mark.claim("N11", "N9")
def test_nan_and_inf_stay_in_their_group() -> None:
    x = torch.randn(3, 2, 4, 4)
    x[1, 0, 2, 2] = math.nan
    x[2, 1, 0, 0] = math.inf
    xr = x.clone().requires_grad_(True)
    y = r_layer_norm2d(xr, torch.ones(2), torch.zeros(2), torch.tensor(0.5))
    y.backward(torch.ones_like(y))
    assert xr.grad is not None
    bad = torch.zeros(3, 2, dtype=torch.bool)
    bad[1, 0] = bad[2, 1] = True
    finite_y = torch.isfinite(y).all(dim=(-2, -1))
    finite_g = torch.isfinite(xr.grad).all(dim=(-2, -1))
    assert bool(finite_y[~bad].all()) and bool(finite_g[~bad].all())
    assert not bool(finite_y[bad].any())


@needs_kernel
@pytest.mark.claim("N11")
@pytest.mark.parametrize("two_d", [True, False])
def test_threads_split_groups_without_changing_results(two_d: bool) -> None:
    """Above 2^18 elements the kernel splits the groups over torch's intra-op threads. Every group is computed by
    the same code either way, so y, u and dL/dx are bitwise equal; the affine and lambda gradients sum per-thread
    partial sums in slice order, so they agree to the rounding of that one extra sum (N11's float64 term)."""
    g = torch.Generator().manual_seed(5)
    shape = (8, 16, 48, 48) if two_d else (64, 24, 256)
    x = torch.randn(shape, generator=g) * 3 + 1
    gy = torch.randn(shape, generator=g)
    layer: torch.nn.Module = rv.BayesianRLayerNorm2d(16) if two_d else rv.BayesianRLayerNorm((24, 256))
    with torch.no_grad():
        for prm in layer.parameters():
            if prm.ndim:
                prm.copy_(1 + 0.3 * torch.randn(prm.shape, generator=g))
    outs = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xr = x.clone().requires_grad_(True)
            y, u = layer(xr, return_uncertainty=True)
            (y * gy).sum().add((u * 2).sum()).backward()
            outs.append((y.detach(), u.detach(), xr.grad, [p.grad.clone() for p in layer.parameters()]))
            layer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(old)
    (y1, u1, g1, p1), (y2, u2, g2, p2) = outs
    assert torch.equal(y1, y2) and torch.equal(u1, u2) and torch.equal(g1, g2)
    for a, b in zip(p1, p2, strict=True):
        # one float32 rounding of the final value plus the float64 reordering (2^-40 relative is far above it)
        torch.testing.assert_close(a, b, rtol=2.0**-23, atol=0.0)


@pytest.mark.claim("N1", "N11")
@pytest.mark.parametrize("side", [4, 5, 8, 16])
def test_constant_planes_of_any_magnitude_give_beta(side: int) -> None:
    """A constant plane has x_c = 0, so y = beta, whatever its magnitude (N1: |y - beta| <= sqrt(M - 1) |gamma|). The
    8-lane output path once formed y = x s + (beta - mean s), whose rounding of mean s survived: a 4 x 4 plane of
    1e30 gave 7.7e15, of 1e10 gave 1.4e-4. Channels next to the constant one are ordinary."""
    torch.manual_seed(0)
    for cls in (rv.RLayerNorm2d, rv.BayesianRLayerNorm2d):
        m = cls(3)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([1.5, -2.0, 0.5]))
            m.bias.copy_(torch.tensor([0.25, -1.0, 3.0]))
        for v in (1e30, 1e20, 1e10, 3e9, -7e12):
            x = torch.randn(2, 3, side, side)
            x[:, 1] = v
            y = m(x).detach()
            beta, gamma = m.bias.detach()[1], m.weight.detach()[1]
            dev = float((y[:, 1] - beta).abs().max())
            if side * side & (side * side - 1) == 0:  # M a power of 2: the mean of the copies is exact, x_c = 0
                assert dev == 0.0, (cls.__name__, v, side, dev)
            assert dev <= math.sqrt(side * side - 1) * abs(float(gamma)), (cls.__name__, v, side, dev)
            assert torch.isfinite(y).all()


# ---- the Bayesian forward's 8-lane psi and expm1 (N11, "the per-group scalars in 8 lanes") -----------------

needs_vector = pytest.mark.skipif(not rnorm.vector_paths(), reason="the kernel has no 8-lane paths here (no AVX-512)")
# N11, "The per-group scalars in 8 lanes": log1p within 10u, amplified by PSI-3's cancellation factor c(t) <= 43 above
# the switch at 0.1, plus the final rounding: 10u c + u = 431u (u = 2^-53); the series branch below is PSI-3's 19u
PSI_TOL = N11_PSI_LANE_TOL  # 431 u
EXPM1_TOL = N11_EXPM1_LANE_TOL  # 4 eps: the reduction, an alternating Horner sum (< 3u), one rounding at the end


def _rel(got: float, ref: Any) -> float:
    import mpmath

    return 0.0 if ref == 0 and got == 0 else abs(float((mpmath.mpf(got) - ref) / ref))


def _vector_errors(ts: list[float], zs: list[float]) -> tuple[list[float], list[float]]:
    import mpmath

    from rln_verified.verify.special import psi_ref

    out = rnorm.vector_psi_expm1(torch.tensor(ts, dtype=torch.float64), torch.tensor(zs, dtype=torch.float64))
    assert out is not None
    ps, em = out[0].tolist(), out[1].tolist()
    tiny = 2.0**-1022
    ep = [_rel(p, psi_ref(t)) if psi_ref(t) >= tiny else (0.0 if 0.0 <= p <= tiny else math.inf)
          for t, p in zip(ts, ps, strict=True)]
    with mpmath.workdps(60):
        ez = [_rel(e, mpmath.expm1(mpmath.mpf(z))) for z, e in zip(zs, em, strict=True)]
    return ep, ez


@needs_kernel
@needs_vector
@pytest.mark.claim("N11")
def test_vector_psi_and_expm1_sweep_against_mpmath() -> None:
    """Every order of magnitude of t (4 a decade), dense in [1e-3, 10] and just above the switch at 0.1, where psi's
    direct form cancels (the worst case of PSI-3), both sides of the switch; z from -1e-300 to -800 and across the
    reduction's boundaries at multiples of ln2/2. The lanes are filled in groups of 8 and a short tail, as the
    kernel's are."""
    ts = [10.0 ** (k / 4) for k in range(-1200, 1201)] + [0.1 + k * 1e-4 for k in range(1, 2000)]
    ts += [10.0 ** (-3 + k / 100) for k in range(401)]  # dense where c(t) is large: a switch moved below 0.1 shows here
    ts += [0.0, math.nextafter(0.1, 0.0), 0.1, math.nextafter(0.1, 1.0), 1.0, 2.0**53, 2.0**1000]
    zs = [-(10.0 ** (k / 8)) for k in range(-2400, 24)] + [-k * math.log(2) / 2 for k in range(0, 60)]
    zs += [math.nextafter(-k * math.log(2) / 2, s) for k in range(1, 60) for s in (0.0, -math.inf)] + [-0.0, -745.0]
    n = max(len(ts), len(zs)) // 8 * 8 + 13  # every point kept, and a tail of 5 lanes
    ts, zs = (ts * 2)[:n], (zs * 3)[:n]
    assert n <= 2 * len(ts) and n <= 3 * len(zs)
    ep, ez = _vector_errors(ts, zs)
    wp, wz = max(range(len(ep)), key=ep.__getitem__), max(range(len(ez)), key=ez.__getitem__)
    assert ep[wp] <= PSI_TOL, f"psi({ts[wp]!r}): relative error {ep[wp]:.3g} > {PSI_TOL:g}"
    assert ez[wz] <= EXPM1_TOL, f"expm1({zs[wz]!r}): relative error {ez[wz]:.3g} > {EXPM1_TOL:.3g}"
    # the clamp at -800 must keep a NaN (and take -inf to -1): a NaN z once came back -1
    out = rnorm.vector_psi_expm1(torch.zeros(3, dtype=torch.float64),
                                 torch.tensor([math.nan, -math.inf, -1e300], dtype=torch.float64))
    assert out is not None and math.isnan(float(out[1][0])) and out[1][1:].tolist() == [-1.0, -1.0]


@needs_kernel
@needs_vector
@pytest.mark.claim("N11")
def test_vector_psi_and_expm1_random() -> None:
    """rln-verify's check of the lanes (Hypothesis, ``target()`` on the worst margin, pinned examples)."""
    assert_check("N11", "rnorm psi and expm1", "cpu", torch.float64)


@needs_kernel
@pytest.mark.claim("N11")
@pytest.mark.parametrize(("eps", "alpha"), [(1e-5, math.nan), (1e-5, math.inf), (1e-5, -1.0), (0.0, 1.0),
                                            (math.nan, 1.0)])
def test_the_operator_refuses_numbers_the_layers_never_pass(eps: float, alpha: float) -> None:
    """The operators are public, and the kernel is defined for 0 < eps < inf, 0 <= alpha < inf only: a NaN alpha gave
    u = 1 and a = 0 in the 8-lane routine (its clamp turned a NaN z into -800), NaN in the scalar one."""
    x, w, b, lam = torch.randn(2, 3, 8, 8), torch.ones(3), torch.zeros(3), torch.tensor(0.5)
    with pytest.raises(ValueError, match="eps must be positive"):
        torch.ops.rln_verified.rnorm_forward(x, w, b, lam, None, 1.0, eps, alpha, True, True, 1, 8, 8)
    with pytest.raises(ValueError, match="lambda bounds"):
        torch.ops.rln_verified.rnorm_forward(x, w, b, lam, 0.5, 0.1, 1e-5, 1.0, True, True, 1, 8, 8)


@needs_kernel
@pytest.mark.claim("N11")
def test_u_is_plus_zero_where_it_is_zero() -> None:
    """u = 1 - exp(-2 alpha psi) is +0 at alpha = 0 and on a constant plane (t = 0), as in the float64 formula; the
    8-lane routine once gave -0 there (1/u and log u then change sign)."""
    x = torch.randn(9, 3, 8, 8)
    x[:, 1] = 2.5
    for alpha, zero in ((1.0, (slice(None), 1)), (0.0, (slice(None), slice(None)))):
        _, u = bayesian_r_layer_norm2d(x, None, None, torch.tensor(0.5), alpha, 1e-5, return_uncertainty=True)
        uz = u.reshape(9, 3)[zero]
        assert bool((uz == 0).all()) and not bool(torch.signbit(uz).any()), (alpha, uz)


@needs_kernel
@pytest.mark.claim("N11", "N9")
def test_a_group_gives_the_same_bits_alone_at_any_position_and_next_to_nan() -> None:
    """The Bayesian forward takes its per-group scalars 8 groups at a time: a group's y, u and dL/dx must not depend
    on which lanes it shares, on the batch size (a short last block), or on a NaN group beside it."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(13, 3, 8, 8, generator=g) * 2 + 0.5
    gy = torch.randn(13, 3, 8, 8, generator=g)
    layer = rv.BayesianRLayerNorm2d(3)

    def run(xb: torch.Tensor, gb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr = xb.clone().requires_grad_(True)
        y, u = layer(xr, return_uncertainty=True)
        (y * gb).sum().add(u.sum()).backward()
        assert xr.grad is not None
        return y.detach(), u.detach(), xr.grad

    y, u, gx = run(x, gy)
    for i in (0, 5, 12):
        yi, ui, gi = run(x[i:i + 1], gy[i:i + 1])
        assert torch.equal(yi[0], y[i]) and torch.equal(ui[0], u[i]) and torch.equal(gi[0], gx[i]), i
    xn = x.clone()
    xn[4, 1, 3, 3] = math.nan
    yn, un, _ = run(xn, gy)
    keep = torch.ones(13, 3, dtype=torch.bool)
    keep[4, 1] = False
    assert torch.equal(yn[keep], y[keep]) and torch.equal(un.reshape(13, 3)[keep], u.reshape(13, 3)[keep])
    assert math.isnan(float(un.reshape(13, 3)[4, 1])), "the NaN group's u must be NaN, not a value"
    # the float64 per-group values the operator saves show a 1-ulp change that the float32 outputs would round away
    w, b, lam = torch.ones(3), torch.zeros(3), torch.tensor(0.7)

    def stats(xb: torch.Tensor) -> torch.Tensor:
        out = torch.ops.rln_verified.rnorm_forward(xb, w, b, lam, None, 1.0, 1e-5, 1.0, True, True, 1, 8, 8)
        return out[2].reshape(xb.shape[0], 3, -1)

    full, alone = stats(x), [stats(x[i:i + 1])[0] for i in range(13)]
    assert all(torch.equal(alone[i], full[i]) for i in range(13))
    with_nan = stats(xn)
    assert torch.equal(with_nan[keep], full[keep]) and not bool(torch.isfinite(with_nan[4, 1, 1:]).all())


@needs_kernel
@pytest.mark.claim("N11", "PSI-3")
def test_scalar_psi_sweep_against_mpmath() -> None:
    """The kernel's scalar psi: every per-group psi on a build without the vector paths, and the lanes the 8-lane
    routine hands over. It has the float64 formula of PSI-3 (the series to t0 = 0.1, then log1p(t) - t/(1 + t)), so
    PSI-3's bound, 44 eps, applies; the sweep is dense where the direct form cancels."""
    import mpmath

    from rln_verified.verify.special import psi_ref

    ts = [10.0 ** (k / 4) for k in range(-1200, 1201)] + [10.0 ** (-3 + k / 100) for k in range(401)]
    ts += [0.0, math.nextafter(0.1, 0.0), 0.1, math.nextafter(0.1, 1.0), 1e-8, 1.0, 2.0**53]
    got = rnorm.scalar_psi(torch.tensor(ts, dtype=torch.float64))
    assert got is not None
    tol, worst = N11_PSI_SCALAR_TOL, (0.0, 0.0)
    for t, p in zip(ts, got.tolist(), strict=True):
        ref = psi_ref(t)
        if ref < 2.0**-1022:
            assert 0.0 <= p <= 2.0**-1022, (t, p)
            continue
        worst = max(worst, (abs(float((mpmath.mpf(p) - ref) / ref)), t))
    assert worst[0] <= tol, f"psi({worst[1]!r}): relative error {worst[0]:.3g} > {tol:.3g}"
    special = rnorm.scalar_psi(torch.tensor([math.inf, math.nan, -1.0], dtype=torch.float64))
    assert special is not None and special[0] == math.inf and bool(special[1:].isnan().all())


@needs_kernel
@pytest.mark.claim("N11")
def test_the_build_without_vector_paths_meets_n11(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines without AVX-512 run the flat loops and the scalar per-group routines at every width. Here the same
    source, built with the vector paths left out (-mno-avx512f), runs N11's pinned inputs and a spread of widths,
    rows and magnitudes under N11's bound. (On a machine without AVX-512 the kernel under test is this build.)"""
    import ctypes
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("-mno-avx512f is an x86 flag")
    path = toolchain.build(rnorm.KERNEL.src, [*toolchain.compile_flags(), "-mno-avx512f"])
    lib = ctypes.CDLL(str(path))
    rnorm._setup(lib)
    assert lib.rln_vector_paths() == 0
    monkeypatch.setattr(rnorm, "library", lambda: lib)
    assert not rnorm.vector_paths()
    g = torch.Generator().manual_seed(3)
    cases = list(N11_PINS)
    for two_d, p_, l_ in [(True, 4, 8), (True, 5, 16), (True, 6, 32), (True, 3, 8), (False, 2, 24), (False, 1, 40)]:
        for bayes, lam, scale in [(True, 1e-3, 1.0), (True, 0.7, 1e-20), (False, 0.3, 1e20)]:
            shape = (2, 3, p_, l_) if two_d else (3, p_, l_)
            vals = torch.randn(math.prod(shape), generator=g).tolist()
            cases.append({"two_d": two_d, "shape": shape, "scale": scale, "offset": 0.0, "vals": vals, "bayes": bayes,
                          "affine": "both", "alpha": 1.0, "lam": lam, "seed": 1})
    ramp = [0.01 * k for k in range(64)]  # a smooth plane: r and t tiny, psi on its series branch
    cases.append(_pin(True, (1, 1, 8, 8), ramp, lam=1e-3))
    worst = max(_margins(case) for case in cases)
    assert worst <= 1.0, worst
    worst_big = max(large_alpha_psi_margin(alpha, lam) for alpha, lam in LARGE_ALPHA_PSI)
    assert worst_big <= 1.0, worst_big
