"""The R-LayerNorm kernel as torch operators (rln_verified::rnorm_forward / rnorm_backward,
rln_verified/_native/rnorm.py): opcheck, the checked C boundary, the fused kernel staying in use under torch.compile,
second derivatives, and the lambda_raw checkpoint hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rln_verified as rv
from rln_verified._native import rnorm
from rln_verified._native.rnorm import PlaneConfig

pytestmark = pytest.mark.skipif(not rnorm.available(), reason=f"fused kernel not in use: {rnorm.reason()}")

U32 = 2.0**-24  # float32 unit roundoff

LAYERS: list[tuple[type[nn.Module], Any, tuple[int, ...]]] = [
    (rv.RLayerNorm2d, 3, (2, 3, 5, 6)),
    (rv.BayesianRLayerNorm2d, 3, (2, 3, 5, 6)),
    (rv.RLayerNorm, (4, 8), (3, 4, 8)),
    (rv.BayesianRLayerNorm, (4, 8), (3, 4, 8)),
]
IDS = [c.__name__ for c, _, _ in LAYERS]


def _make(cls: type[nn.Module], arg: Any, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(1)
    m = cls(arg, dtype=dtype)
    with torch.no_grad():  # a non-trivial affine, so a wrong weight or bias gradient shows
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-1.0, 1.0)
    return m


def _op_args(two_d: bool, bayes: bool) -> tuple[Any, ...]:
    torch.manual_seed(0)
    if two_d:
        x = torch.randn(2, 3, 5, 6)
        w, b = torch.rand(3) + 0.5, torch.randn(3)
        cfg = PlaneConfig(1e-3, 1.0, 1e-5, 0.7 if bayes else 0.0, bayes, True, 1, 5, 6)
    else:
        x = torch.randn(3, 4, 8)
        w, b = torch.rand(4, 8) + 0.5, torch.randn(4, 8)
        cfg = PlaneConfig(1e-3, 1.0, 1e-5, 0.7 if bayes else 0.0, bayes, False, 2, 4, 8)
    lam = torch.tensor([0.3])
    return (x, w, b, lam, *cfg)


@pytest.mark.parametrize("two_d", [True, False])
@pytest.mark.parametrize("bayes", [True, False])
def test_forward_op_passes_opcheck(two_d: bool, bayes: bool) -> None:
    args = _op_args(two_d, bayes)
    for i in (0, 1, 2, 3):
        args[i].requires_grad_(True)
    # test_autograd_registration, test_faketensor, test_aot_dispatch_static/dynamic, test_schema
    torch.library.opcheck(torch.ops.rln_verified.rnorm_forward.default, args)


def test_backward_op_passes_opcheck() -> None:
    x, w, b, lam, *rest = _op_args(True, True)
    cfg = PlaneConfig(*rest)
    _, _, stats = torch.ops.rln_verified.rnorm_forward(x, w, b, lam, *cfg)
    gy, gu = torch.randn_like(x), torch.randn(6)
    torch.library.opcheck(torch.ops.rln_verified.rnorm_backward.default,
                          (x, w, lam, stats, gy, gu, *cfg, True, True))


def test_operator_and_eager_node_agree_bit_for_bit() -> None:
    x, w, b, lam, *rest = _op_args(True, True)
    cfg = PlaneConfig(*rest)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    y_op, u_op, _ = torch.ops.rln_verified.rnorm_forward(xs[0], w, b, lam, *cfg)
    y_eg, u_eg = rnorm._NativeFn.apply(xs[1], w, b, lam, cfg)
    assert torch.equal(y_op, y_eg) and torch.equal(u_op, u_eg)
    gy = torch.randn_like(x)
    (y_op * gy).sum().backward()
    (y_eg * gy).sum().backward()
    assert xs[0].grad is not None and xs[1].grad is not None and torch.equal(xs[0].grad, xs[1].grad)


@pytest.mark.parametrize(
    ("change", "err", "match"),
    [
        (lambda a: {0: a[0].double()}, TypeError, "x must be torch.float32"),
        (lambda a: {0: a[0].transpose(-1, -2)}, ValueError, "x must be contiguous"),
        (lambda a: {1: a[1][:2]}, ValueError, "weight must have 3 elements"),
        (lambda a: {2: a[2].half()}, TypeError, "bias must be torch.float32"),
        (lambda a: {3: torch.tensor([0.3, 0.4])}, ValueError, "lambda must have 1 elements"),
        (lambda a: {0: a[0][..., :1]}, ValueError, "contiguous|planes"),
        (lambda a: {12: 7}, ValueError, "not a stack of"),
        (lambda a: {10: 3}, ValueError, "mode must be 0, 1 or 2"),
    ],
)
def test_the_c_boundary_rejects_what_it_does_not_expect(change: Callable[[list[Any]], dict[int, Any]],
                                                        err: type[Exception], match: str) -> None:
    args = list(_op_args(True, False))
    for i, v in change(args).items():
        args[i] = v
    with pytest.raises(err, match=match):
        rnorm._run_forward(args[0], args[1], args[2], args[3], PlaneConfig(*args[4:]))


def test_the_c_boundary_checks_the_backward_buffers() -> None:
    x, w, b, lam, *rest = _op_args(True, True)
    cfg = PlaneConfig(*rest)
    _, _, stats = rnorm._run_forward(x, w, b, lam, cfg)
    gy = torch.randn_like(x)
    with pytest.raises(TypeError, match=r"stats must be torch\.float64"):
        rnorm._run_backward(x, w, lam, stats.float(), gy, None, cfg, True, True)
    with pytest.raises(ValueError, match="grad of y must have"):
        rnorm._run_backward(x, w, lam, stats, gy[:1].contiguous(), None, cfg, True, True)
    with pytest.raises(ValueError, match="grad of u must have 6"):
        rnorm._run_backward(x, w, lam, stats, gy, torch.randn(5), cfg, True, True)


@pytest.mark.parametrize(("cls", "arg", "shape"), LAYERS, ids=IDS)
def test_the_fused_kernel_stays_in_use_under_compile(cls: type[nn.Module], arg: Any, shape: tuple[int, ...],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    m = _make(cls, arg)
    calls = {"fwd": 0, "bwd": 0}
    run_f, run_b = rnorm._run_forward, rnorm._run_backward

    def count_f(*a: Any) -> Any:
        calls["fwd"] += 1
        return run_f(*a)

    def count_b(*a: Any) -> Any:
        calls["bwd"] += 1
        return run_b(*a)

    monkeypatch.setattr(rnorm, "_run_forward", count_f)
    monkeypatch.setattr(rnorm, "_run_backward", count_b)
    x = torch.randn(shape, requires_grad=True)
    step = torch.compile(lambda t: (m(t) ** 2).sum(), fullgraph=True)
    step(x).backward()
    assert calls == {"fwd": 1, "bwd": 1}
    g = x.grad
    x.grad = None
    (m(x) ** 2).sum().backward()  # eager: the same kernel, so the same bits
    assert g is not None and x.grad is not None and torch.equal(g, x.grad)


@pytest.mark.parametrize(("cls", "arg", "shape"), LAYERS, ids=IDS)
def test_gradgradcheck_float64(cls: type[nn.Module], arg: Any, shape: tuple[int, ...]) -> None:
    m = _make(cls, arg, torch.float64)
    names = ["weight", "bias", "lambda_raw"]
    params = [getattr(m, n).detach().clone().requires_grad_() for n in names]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.functional_call(m, dict(zip(names, p, strict=True)), (x,))
        return out

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize(("cls", "arg", "shape"), LAYERS, ids=IDS)
def test_float32_gradient_penalty_matches_float64(cls: type[nn.Module], arg: Any, shape: tuple[int, ...]) -> None:
    """d/dx ||d(sum y^2)/dx||^2 through the fused float32 path against float64.

    Tolerance (backward-error argument): the float32 path differs from float64 only where it rounds in float32:
    the scaled, centred input (x s exact, the mean and the subtraction round once each: |dx| <= 3 u max|x| per
    element, u = 2^-24) and the kernel's y, whose N11 error is below 2u |y| + u max|y| at this size. Both act as input
    perturbations of the float64 penalty gradient P. So |P32 - P64| <= |P64(x + dx, g + dg) - P64(x, g)|, which we
    bound by evaluating P64 at perturbations of those sizes along 8 random sign patterns and taking twice the largest
    change (the factor covers patterns not drawn); a 1e-300 floor keeps a zero reference from failing by underflow.
    """
    m64 = _make(cls, arg, torch.float64)
    m32 = cls(arg)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})  # the same float32-exact values
    x64 = torch.randn(shape, dtype=torch.float64)

    def penalty_grad(m: nn.Module, x: torch.Tensor, gscale: float = 1.0) -> torch.Tensor:
        x = x.detach().requires_grad_()
        y = m(x)
        (g,) = torch.autograd.grad((y * y).sum() * gscale, x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        return h

    x64 = x64.float().double()
    p64 = penalty_grad(m64, x64)
    p32 = penalty_grad(m32, x64.float()).double()
    gen = torch.Generator().manual_seed(3)
    change = torch.zeros(())
    for _ in range(8):
        sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
        dx = 3 * U32 * x64.abs().amax() * sign
        moved = penalty_grad(m64, x64 + dx, 1.0 + 3 * U32)
        change = torch.maximum(change, (moved - p64).abs().max())
    tol = 2 * float(change) + 1e-300
    err = float((p32 - p64).abs().max())
    assert err <= tol, f"max |P32 - P64| = {err:.3e} > derived {tol:.3e} (max |P64| = {float(p64.abs().max()):.3e})"


def test_group_norm_gradient_penalty_is_matched_at_alpha_zero() -> None:
    """BayesianRLayerNorm2d with alpha = 0 is GroupNorm(C, C): their second derivatives agree in float64."""
    torch.manual_seed(0)
    m = rv.BayesianRLayerNorm2d(3, alpha=0.0, dtype=torch.float64)
    gn = nn.GroupNorm(3, 3, eps=1e-5, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    out = []
    for layer in (m, gn):
        (g,) = torch.autograd.grad((layer(x) ** 3).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        out.append(h)
    # Both are float64 evaluations of one function: agreement to ~1e3 u64 relative (sums of ~200 terms).
    scale = float(out[1].abs().max())
    assert float((out[0] - out[1]).abs().max()) <= 1e3 * 2.0**-53 * scale


@pytest.mark.parametrize(("cls", "arg", "shape"), LAYERS, ids=IDS)
def test_checkpoints_with_a_0d_lambda_raw_still_load(cls: type[nn.Module], arg: Any, shape: tuple[int, ...]) -> None:
    m = _make(cls, arg)
    sd = m.state_dict()
    old = {k: (v.reshape(()) if k == "lambda_raw" else v) for k, v in sd.items()}
    old["lambda_raw"] = torch.tensor(0.25)
    fresh = cls(arg)
    fresh.load_state_dict(old)
    assert fresh.lambda_raw.shape == (1,) and float(fresh.lambda_raw) == 0.25
    x = torch.randn(shape)
    with torch.no_grad():
        m.lambda_raw.fill_(0.25)
        assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize(("cls", "arg", "shape"), LAYERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32_and_returns_float32(cls: type[nn.Module], arg: Any, shape: tuple[int, ...],
                                                          dtype: torch.dtype) -> None:
    """As torch's layer_norm/group_norm under autocast: the low-precision input is upcast, the result is float32."""
    m = _make(cls, arg)
    x = torch.randn(shape).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        y = m(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, m(x.float()))  # the same float32 computation, bit for bit
    # float32 and float64 inputs are left as they are under autocast: the same result as outside it, bit for bit
    for wide in (torch.float32, torch.float64):
        mw = _make(cls, arg, wide)
        xw = x.to(wide)
        with torch.autocast("cpu", dtype=dtype):
            yw = mw(xw)
        assert yw.dtype == wide and torch.equal(yw, mw(xw))
    # An error raised under autocast names the layer, as outside it.
    with torch.autocast("cpu", dtype=dtype), pytest.raises(ValueError, match=rf"^{cls.__name__}: expected "):
        m(x[..., :1, :1] if cls in (rv.RLayerNorm2d, rv.BayesianRLayerNorm2d) else x[..., :3])
    # The functional forms keep the input's dtype under autocast, as outside it (computed in float32, cast back).
    functional = {rv.RLayerNorm: rv.functional.r_layer_norm, rv.BayesianRLayerNorm: rv.functional.bayesian_r_layer_norm}
    fn = functional.get(cls)
    if fn is not None:
        ns = (arg,) if isinstance(arg, int) else tuple(arg)
        with torch.autocast("cpu", dtype=dtype):
            yf = fn(x, ns)
        assert yf.dtype == dtype and torch.equal(yf, fn(x, ns))


@pytest.mark.parametrize("cls", [rv.RLayerNorm2d, rv.BayesianRLayerNorm2d], ids=lambda c: c.__name__)
@pytest.mark.parametrize("affine", [True, False])
def test_a_trace_sees_the_planes_of_its_input(cls: type[nn.Module], affine: bool) -> None:
    """torch.jit.trace records the traced input's sizes as constants of the operator call. A 2d operator takes its
    planes from x's last two dims, so a float32 trace made at (5, 6) and run at (6, 5), (3, 10), (10, 3), (2, 15) or
    (7, 7) gives eager's outputs and gradients bit for bit (the same C kernel on the same planes), not a (5, 6) view
    of a (6, 5) plane."""
    import warnings

    torch.manual_seed(0)
    m = cls(3, affine=affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        tr = torch.jit.trace(m, torch.randn(2, 3, 5, 6))  # type: ignore[no-untyped-call]
    for shape in [(2, 3, 6, 5), (2, 3, 3, 10), (2, 3, 10, 3), (2, 3, 2, 15), (4, 3, 7, 7)]:
        x = torch.randn(*shape)
        results = []
        for f in (tr, m):
            xr = x.clone().requires_grad_(True)
            y = f(xr)
            wrt = [xr, *m.parameters()]
            results.append((y.detach(), *torch.autograd.grad((y * y).sum(), wrt)))
        for got, want in zip(*results, strict=True):
            assert torch.equal(got, want), shape


@pytest.mark.parametrize("cls", [rv.RLayerNorm2d, rv.BayesianRLayerNorm2d], ids=lambda c: c.__name__)
def test_export_with_dynamic_height_and_width(cls: type[nn.Module]) -> None:
    """The 2d operators read the plane from x's sizes without fixing them (no int() of a symbolic size): a program
    exported with H and W dynamic runs at another H x W and gives eager's output bit for bit (the same C kernel)."""
    torch.manual_seed(0)
    m = cls(3)
    h, w = torch.export.Dim("H", min=2, max=64), torch.export.Dim("W", min=2, max=64)
    ep = torch.export.export(m, (torch.randn(2, 3, 5, 6),), dynamic_shapes={"x": {2: h, 3: w}})
    for shape in [(2, 3, 6, 5), (2, 3, 9, 4), (2, 3, 8, 8)]:
        x = torch.randn(*shape)
        assert torch.equal(ep.module()(x), m(x)), shape
