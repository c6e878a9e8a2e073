"""The Bayesian linear layers and the Gaussian kernels under PyTorch's transforms: the C boundary,
the torch.library operators, autocast, higher-order autograd, torch.func, meta construction, copies, and the fused
KL kernel (KL-2).

Every reference is independent of the path under test: float64 eager, finite differences (gradcheck and
gradgradcheck), a closed form computed by hand (2 W^T W), or mpmath.
"""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from rln_verified._bayesian_linear import (
    BayesianLinear,
    BBBLinear,
    CLTLinear,
    CLTLinearDet,
    LRLinear,
)
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified._gaussian import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_logcdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._native import gauss

NATIVE = pytest.mark.skipif(not gauss.available(), reason="the gauss.c kernel is not built here")
LAYERS: list[type[BayesianLinear]] = [BBBLinear, LRLinear, CLTLinear, CLTLinearDet]
U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53


def _make(cls: type[BayesianLinear], n_in: int, n_out: int, **kw: Any) -> BayesianLinear:
    if issubclass(cls, CLTLinear):
        return cls(n_in, n_out, is_input=True, **kw)
    return cls(n_in, n_out, **kw)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _both(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, tuple):
        return tuple(t for t in out if t is not None)
    return (out,)


# ---- 1. the C boundary ------------------------------------------------------------------------------------------


def test_autocast_clt_no_longer_crashes_in_a_subprocess() -> None:
    """Before: torch.addmm returned bf16 under autocast and the bf16 buffer reached C (segfault, heap corruption).
    Run in a child process, so a crash fails this test and not the pytest run."""
    code = textwrap.dedent("""
        import torch
        from rln_verified import BayesianMLP, CLTLinear
        torch.manual_seed(0)
        for dt in (torch.bfloat16, torch.float16):
            layer = CLTLinear(16, 32, is_input=True)
            x = torch.randn(64, 16)
            with torch.autocast("cpu", dtype=dt):
                m, v = layer(x)
                (m.float().sum() + v.float().sum()).backward()
            assert m.dtype == dt and v.dtype == dt, (m.dtype, v.dtype)
            mlp = BayesianMLP(16, 4, 3, 32, layer_type="clt")
            with torch.autocast("cpu", dtype=dt):
                m, v = mlp(x)
                m.float().sum().backward()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_a_default_device_never_reaches_c_in_a_subprocess() -> None:
    """Before: under ``with torch.device("meta")`` the kernels' output buffers (u, stats, aux, the KL outputs) were
    made on the default device, so C wrote through a meta pointer (segfault); and a meta lambda or weight beside a CPU
    input passed the fused path's device test, so C read a meta tensor's data (errors of 1e35, no exception). Now the
    buffers are CPU tensors made explicitly, and a mix of meta and CPU tensors takes the eager path, which raises.
    Each result is compared with the same call outside the context. Run in a child process, so a crash fails only
    this test."""
    code = textwrap.dedent("""
        import torch
        import rln_verified as rv
        from rln_verified.functional import kl_normal, r_layer_norm, relu_moments
        torch.manual_seed(0)
        x, mu, s = torch.randn(2, 3, 4, 6), torch.randn(64), torch.rand(64) + 0.1
        ref = (r_layer_norm(x, 6, lambda_=0.3), *relu_moments(mu, s), kl_normal(mu, s, torch.zeros(64), torch.ones(64)))
        layer = rv.BayesianRLayerNorm2d(3)
        xg = x.clone().requires_grad_()
        layer(xg).sum().backward()
        g_ref = xg.grad.clone()
        with torch.device("meta"):
            got = (r_layer_norm(x, 6, lambda_=0.3), *relu_moments(mu, s),
                   kl_normal(mu, s, torch.zeros(64, device="cpu"), torch.ones(64, device="cpu")))
            xg.grad = None
            layer(xg).sum().backward()
        assert all(g.device.type == "cpu" and torch.equal(g, r) for g, r in zip(got, ref))
        assert torch.equal(xg.grad, g_ref)
        for kw in ({"lambda_": torch.tensor(0.3, device="meta")}, {"weight": torch.ones(6, device="meta")}):
            try:
                r_layer_norm(x, 6, **{"lambda_": 0.3, **kw})
            except RuntimeError as e:
                assert "device" in str(e), e
            else:
                raise AssertionError(f"a meta tensor beside a CPU input was accepted: {list(kw)}")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


@NATIVE
@pytest.mark.parametrize("bad", ["bf16", "f64", "strided", "short", "meta", "int"])
def test_boundary_rejects_bad_relu_buffers(bad: str) -> None:
    mu, s = torch.randn(64), torch.rand(64) + 0.1
    arg: Any = {"bf16": mu.bfloat16(), "f64": mu.double(), "strided": torch.randn(128)[::2], "short": mu[:63],
                "meta": mu.to("meta"), "int": mu.int()}[bad]
    err = TypeError if bad in ("bf16", "f64", "int") else ValueError
    # a short mu is checked against itself first, then s is the argument whose size is wrong
    with pytest.raises(err, match="forward_raw: s" if bad == "short" else "forward_raw: mu"):
        gauss.forward_raw(arg, s)
    with pytest.raises(err, match="forward_raw: s"):
        gauss.forward_raw(mu, arg)
    with pytest.raises(err, match="forward_raw: v"):
        gauss.forward_raw(mu, s, arg)
    _, _, aux = gauss.forward_raw(mu, s)
    with pytest.raises(err, match="backward_raw: (s|mu)" if bad == "short" else "backward_raw: mu"):
        gauss.backward_raw(None, None, arg, s, None, aux)
    if bad != "short":  # any length of rho is valid on its own
        with pytest.raises(err, match="exp_clamp: rho"):
            gauss.exp_clamp(arg, -20.0, 10.0, False)
    with pytest.raises(err, match="exp_clamp: w"):
        gauss.exp_clamp(mu, -20.0, 10.0, False, arg)


@NATIVE
def test_boundary_rejects_bad_aux_and_exp_max_ulp_args() -> None:
    mu, s = torch.randn(8), torch.rand(8) + 0.1
    _, _, aux = gauss.forward_raw(mu, s)
    with pytest.raises(TypeError, match=r"aux must be torch\.float64"):
        gauss.backward_raw(None, None, mu, s, None, aux.float())
    with pytest.raises(ValueError, match="aux must have 24 elements"):
        gauss.backward_raw(None, None, mu, s, None, aux[:-1])
    with pytest.raises(ValueError, match="g_mean must have the shape"):
        gauss.backward_raw(torch.ones(9), None, mu, s, None, aux)
    with pytest.raises(ValueError, match="stride"):
        gauss.exp_max_ulp(0.0, 1.0, 0)
    with pytest.raises(TypeError, match="lo must be a real number"):
        gauss.exp_max_ulp("0", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sq must have the shape"):
        gauss.kl_forward_raw(mu, s[:4], mu, s)


# ---- 2. the torch.library operators -----------------------------------------------------------------------------


@NATIVE
def test_opcheck_every_op() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=g)
    s = torch.rand(3, 5, generator=g) + 0.1
    torch.library.opcheck(gauss.relu_moments_op, (mu, s))
    torch.library.opcheck(gauss.relu_moments_op, (mu.requires_grad_(), s.requires_grad_()))
    _, _, aux = gauss.forward_raw(mu.detach(), s.detach())
    gm, gv = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    torch.library.opcheck(gauss.relu_moments_bwd_op, (gm, gv, mu.detach(), s.detach(), aux))
    rho = torch.randn(4, 6, generator=g) * 10
    for square in (False, True):
        torch.library.opcheck(gauss.exp_clamp_op, (rho, -5.0, 5.0, square))
        torch.library.opcheck(gauss.exp_clamp_op, (rho.clone().requires_grad_(), -5.0, 5.0, square))


@NATIVE
def test_ops_match_the_eager_kernel_and_the_float64_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    mu = (torch.randn(200, generator=g) * 4).requires_grad_()
    s = (torch.rand(200, generator=g) + 0.05).requires_grad_()
    mean, var, _ = gauss.relu_moments_op(mu, s)
    m2, v2 = gauss.relu_moments_f32(mu, s)
    assert torch.equal(mean, m2) and torch.equal(var, v2)  # one kernel, two entry points
    gm, gv = torch.randn(200, generator=g), torch.randn(200, generator=g)
    a = torch.autograd.grad([mean, var], [mu, s], [gm, gv])
    b = torch.autograd.grad([m2, v2], [mu, s], [gm, gv])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@NATIVE
def test_compile_fullgraph_keeps_the_fused_kernels() -> None:
    """Under torch.compile(fullgraph=True) the CLT layer's activation and std run the gauss.c operators: the
    compiled graph calls them, and forward and backward match eager."""
    torch._dynamo.reset()
    layer = CLTLinear(16, 24, is_input=True)
    x = torch.randn(8, 16, requires_grad=True)
    ops: list[str] = []

    def backend(gm: torch.fx.GraphModule, example: Any) -> Any:
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    m, v = compiled(x)
    me, ve = layer(x)
    assert any("relu_moments_f32" in o for o in ops), ops
    assert any("exp_clamp_f32" in o for o in ops), ops
    assert torch.allclose(m, me, rtol=4 * U32, atol=0) and torch.allclose(v, ve, rtol=4 * U32, atol=0)
    gc = torch.autograd.grad(m.sum() + v.sum(), x)[0]
    ge = torch.autograd.grad(me.sum() + ve.sum(), x)[0]
    # Two ways to sum 24 float32 products: their difference is within 2 * 24 u of the sum of magnitudes.
    ref = torch.autograd.grad(*(lambda o: (o[0].abs().sum() + o[1].abs().sum(), x))(layer(x)))[0].abs()
    assert bool(((gc - ge).abs() <= 48 * U32 * (ref + ge.abs()) + 1e-30).all())
    torch._dynamo.reset()


# ---- 3. autocast ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", LAYERS)
def test_autocast_layers_compute_in_float32_and_train(cls: type[BayesianLinear], dt: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = _make(cls, 64, 96, manual_reset=True)
    x = torch.randn(32, 64)
    ref = _both(layer(x))  # float32 eager, the same noise (manual_reset)
    with torch.autocast("cpu", dtype=dt):
        out = _both(layer(x))
        loss = sum(o.float().sum() for o in out)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    # The layer computes in float32; the only difference is the final cast to dt, one rounding: relative
    # u(dt) = 2^-8 (bf16) or 2^-11 (fp16), except where the float32 value is below dt's normal range.
    u = 2.0**-8 if dt == torch.bfloat16 else 2.0**-11
    tiny = float(torch.finfo(dt).tiny)
    for o, r in zip(out, ref, strict=True):
        assert o.dtype == dt
        err = (o.float() - r).abs()
        assert bool((err <= u * r.abs() + tiny).all()), float(err.max())
    for p in layer.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())


@pytest.mark.parametrize("layer_type", ["bbb", "lr", "clt", "cltdet"])
def test_autocast_mlp_trains(layer_type: str) -> None:
    torch.manual_seed(0)
    mlp = BayesianMLP(8, 3, 3, 16, layer_type=layer_type)  # type: ignore[arg-type]
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-2)
    x = torch.randn(20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
        y = _first(out)
        loss = y.float().square().mean()
    assert y.dtype == torch.bfloat16
    loss.backward()
    opt.step()
    for p in mlp.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)


# ---- 4. higher-order autograd -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("variant", ["default", "softplus", "nobias", "var_in"])
def test_layers_gradcheck_and_gradgradcheck(cls: type[BayesianLinear], variant: str) -> None:
    """float64, fixed noise (manual_reset): every input and parameter, first and second order."""
    if variant == "var_in" and not issubclass(cls, CLTLinear):
        pytest.skip("an input variance is a CLT layer's argument")
    torch.manual_seed(0)
    kw: dict[str, Any] = {"manual_reset": True, "dtype": torch.float64}
    if variant == "softplus":
        kw["use_softplus"] = True
    if variant == "nobias":
        kw["bias"] = False
    if issubclass(cls, CLTLinear):
        layer: BayesianLinear = cls(5, 4, is_input=variant != "var_in", **kw)
    else:
        layer = cls(5, 4, **kw)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    v = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]
    layer(x) if variant != "var_in" else layer(x, v)  # draws the noise once

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = dict(zip(names, args[2:], strict=True))
        out = torch.func.functional_call(layer, state, (args[0],) if variant != "var_in" else (args[0], args[1]))
        return _both(out)

    args = (x, v, *params)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("cls", LAYERS)
def test_eager_fused_layers_second_order_at_fused_size(cls: type[BayesianLinear]) -> None:
    """At a size where the fused autograd Functions run (>= 4096 weights), the double backward is the plain
    formula's: gradgradcheck on the input of a float64 layer."""
    torch.manual_seed(0)
    layer = _make(cls, 64, 80, manual_reset=True, dtype=torch.float64)
    x = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    layer(x)
    assert torch.autograd.gradgradcheck(lambda t: _both(layer(t)), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_bbb_hessian_is_two_wt_w() -> None:
    """y = x W^T + b: d^2 sum(y^2)/dx^2 = 2 batch-block-diag(W^T W), with W = mu + sigma eps the sampled weight
    (read back from the layer's parameters and stored noise, not from its forward)."""
    torch.manual_seed(0)
    layer = BBBLinear(64, 80, manual_reset=True, dtype=torch.float64)  # 5120 weights: the fused path
    x = torch.randn(2, 64, dtype=torch.float64)
    layer(x)
    assert layer._random_weight is not None
    w = layer.weight_mu.detach() + torch.exp(layer.weight_rho.detach()) * layer._random_weight
    h = torch.autograd.functional.hessian(lambda t: layer(t).square().sum(), x)
    expect = torch.zeros(2, 64, 2, 64, dtype=torch.float64)
    for i in range(2):
        expect[i, :, i, :] = 2.0 * w.t() @ w
    assert torch.allclose(h, expect, rtol=1e-12, atol=1e-12)


def test_clt_second_derivative_wrt_input() -> None:
    torch.manual_seed(0)
    layer = CLTLinear(64, 80, is_input=True, dtype=torch.float64)
    x = torch.randn(2, 64, dtype=torch.float64, requires_grad=True)
    m, v = layer(x)
    (g,) = torch.autograd.grad(m.sum() + v.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), x)
    assert h is not None and bool(torch.isfinite(h).all())
    assert torch.autograd.gradgradcheck(lambda t: _both(layer(t)), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@NATIVE
def test_float32_hvp_on_the_fused_path_matches_float64() -> None:
    """A Hessian-vector product through the float32 fused CLT path (kernels forward, recomputed VJP for the graph)
    against float64 eager. Tolerance: the float32 HVP is a composition of O(n_in) sums and the RELU-6 forms; each
    step carries a few u32 relative to the sum of magnitudes, so |diff| <= c u32 * HVP of the absolute values; we
    take c = 4 n_in (n_in = 64 terms per sum, forward and twice backward) and compare against the magnitudes."""
    torch.manual_seed(0)
    layer = CLTLinear(64, 80, is_input=True)
    layer64 = copy.deepcopy(layer).double()
    x = torch.randn(4, 64)
    vec = torch.randn(4, 64)

    def hvp(lay: nn.Module, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        t = t.clone().requires_grad_()
        m, v = lay(t)
        (g,) = torch.autograd.grad(m.sum() + 0.5 * v.sum(), t, create_graph=True)
        (h,) = torch.autograd.grad((g * u).sum(), t)
        return h

    h32 = hvp(layer, x, vec)
    h64 = hvp(layer64, x.double(), vec.double())
    scale = hvp(layer64, x.double(), vec.double().abs()).abs() + h64.abs()
    assert bool(((h32.double() - h64).abs() <= 4 * 64 * U32 * scale + 1e-12).all())


FUNCTIONALS: list[tuple[str, Callable[..., Any], int]] = [
    ("relu_moments", relu_moments, 2), ("neg_relu_moments", neg_relu_moments, 2),
    ("crelu_moments", crelu_moments, 2), ("normal_pdf", normal_pdf, 3), ("normal_cdf", normal_cdf, 3),
    ("normal_logcdf", normal_logcdf, 3), ("kl_normal", kl_normal, 4),
]


@pytest.mark.parametrize("name,fn,arity", FUNCTIONALS, ids=[f[0] for f in FUNCTIONALS])
def test_functionals_gradcheck_and_gradgradcheck(name: str, fn: Callable[..., Any], arity: int) -> None:
    g = torch.Generator().manual_seed(3)
    n = 6
    if arity == 2:
        args = (torch.randn(2, n, dtype=torch.float64, generator=g) * 2,
                torch.rand(2, n, dtype=torch.float64, generator=g) + 0.2)
    elif arity == 3:
        args = (torch.randn(n, dtype=torch.float64, generator=g) * 2, torch.randn(n, dtype=torch.float64, generator=g),
                torch.rand(n, dtype=torch.float64, generator=g) + 0.5)
    else:  # r = sq/sp over all three KL branches (r < 1/2, 1/2 <= r < 1, r >= 1)
        sq = torch.tensor([0.1, 0.3, 0.7, 0.9, 1.3, 4.0], dtype=torch.float64)
        args = (torch.randn(n, dtype=torch.float64, generator=g), sq, torch.randn(n, dtype=torch.float64, generator=g),
                torch.ones(n, dtype=torch.float64) + 0.1 * torch.rand(n, dtype=torch.float64, generator=g))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@NATIVE
@pytest.mark.parametrize("name,fn", [("relu_moments", relu_moments), ("kl_normal", kl_normal)])
def test_float32_fused_functionals_build_a_right_graph(name: str, fn: Callable[..., Any]) -> None:
    """float32 CPU runs the C kernels; create_graph=True then returns the plain formula's VJP, whose second
    derivative matches float64 within a few float32 roundings of the terms (8 u32 of their magnitudes)."""
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(300, generator=g)
    s = torch.rand(300, generator=g) + 0.2
    extra = (torch.zeros(300), torch.ones(300)) if name == "kl_normal" else ()

    def second(dtype: torch.dtype) -> torch.Tensor:
        m = mu.to(dtype).requires_grad_()
        sd = s.to(dtype).requires_grad_()
        out = _both(fn(m, sd, *(e.to(dtype) for e in extra)))
        gm, gs = torch.autograd.grad(sum(o.sum() for o in out), [m, sd], create_graph=True)  # type: ignore[arg-type]
        hm, hs = torch.autograd.grad((gm * gm).sum() + gs.sum(), [m, sd])
        return torch.cat([hm, hs])

    h32, h64 = second(torch.float32), second(torch.float64)
    assert bool(((h32.double() - h64).abs() <= 8 * U32 * (h64.abs() + 1.0)).all())


# ---- torch.func -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", LAYERS)
def test_func_transforms_at_256_match_float64_eager(cls: type[BayesianLinear]) -> None:
    """vmap and jacrev at 256x256 (the fused size) in float32, against float64 eager; hessian (float64, small
    batch) against torch.autograd.functional.hessian of the float64 eager layer. Tolerance (float32): each output
    is a sum of 256 products; its error is <= 256 u32 of the sum of magnitudes (the std's exp adds 1 ulp)."""
    torch.manual_seed(0)
    layer = _make(cls, 256, 256, manual_reset=True)
    x = torch.randn(3, 256)
    layer(x)
    layer64 = copy.deepcopy(layer).double()
    out64 = _both(layer64(x.double()))
    abs64 = _both(_abs_layer(layer64)(x.double().abs()))
    # vmap over a leading dim of 2 copies: each call sees the (3, 256) batch whose noise is stored
    vout = torch.vmap(lambda t: _both(layer(t)), in_dims=0)(x.expand(2, 3, 256))
    for o, r, a in zip(vout, out64, abs64, strict=True):
        for k in range(2):
            assert bool(((o[k].double() - r).abs() <= 258 * U32 * (a + r.abs()) + 1e-30).all())
    jac = torch.func.jacrev(lambda t: _first(layer(t)))(x)
    jac64 = torch.autograd.functional.jacobian(lambda t: _first(layer64(t)), x.double())
    assert bool(((jac.double() - jac64).abs() <= 258 * U32 * (jac64.abs() + jac64.abs().max())).all())
    hes = torch.func.hessian(lambda t: _first(layer64(t)).square().sum())(x.double())
    hes_ref = torch.autograd.functional.hessian(lambda t: _first(layer64(t)).square().sum(), x.double())
    assert torch.allclose(hes, hes_ref, rtol=1e-9, atol=1e-12)


def _abs_layer(layer: nn.Module) -> nn.Module:
    """A copy with |parameters| and the std's (not rho's) magnitude kept: a bound on the sums of magnitudes."""
    out = copy.deepcopy(layer)
    with torch.no_grad():
        for n, p in out.named_parameters():
            if "mu" in n:
                p.abs_()
    return out


# ---- 5. meta, copies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("prior", ["numbers", "default"])
def test_meta_construction_then_to_empty(cls: type[BayesianLinear], prior: str) -> None:
    kw: dict[str, Any] = {"prior_mean": 0.5, "prior_std": 2} if prior == "numbers" else {}
    layer = _make(cls, 6, 5, device="meta", **kw)
    assert layer.weight_mu.is_meta and layer.prior_std.is_meta
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    ref = _make(cls, 6, 5, **kw)
    assert torch.equal(layer.prior_mean, ref.prior_mean) and torch.equal(layer.prior_std, ref.prior_std)
    out = _both(layer(torch.randn(4, 6)))
    assert all(bool(torch.isfinite(o).all()) for o in out)
    if layer.weight_rho is not None:
        assert bool(torch.isfinite(layer.KL()[0]))


@pytest.mark.parametrize("layer_type", ["bbb", "lr", "clt", "cltdet"])
def test_meta_mlp(layer_type: str) -> None:
    mlp = BayesianMLP(4, 2, 3, 8, layer_type=layer_type, device="meta")  # type: ignore[arg-type]
    mlp.to_empty(device="cpu")
    for layer in mlp.bayesian_layers():
        layer.reset_parameters()
    assert bool(torch.isfinite(_first(mlp(torch.randn(3, 4)))).all())


def test_number_priors_are_checked_before_any_tensor() -> None:
    with pytest.raises(ValueError, match="prior_std must be > 0"):
        BBBLinear(3, 2, prior_std=0.0, device="meta")
    with pytest.raises(ValueError, match="prior_mean must be finite"):
        BBBLinear(3, 2, prior_mean=math.inf, device="meta")


def test_base_class_is_not_abstract_and_forward_raises() -> None:
    assert type(BayesianLinear) is type  # no ABCMeta: FSDP2 builds type(name, (FSDPModule, cls), {})

    class Mixin:
        pass

    sub = type("Sharded", (Mixin, BBBLinear), {})
    assert issubclass(sub, BBBLinear)
    with pytest.raises(NotImplementedError, match="base class"):
        BayesianLinear(3, 2)(torch.randn(1, 3))


@pytest.mark.parametrize("cls", LAYERS)
def test_deepcopy_and_pickle_round_trip(cls: type[BayesianLinear]) -> None:
    torch.manual_seed(0)
    layer = _make(cls, 7, 5, manual_reset=True)
    x = torch.randn(3, 7)
    ref = _both(layer(x))
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(other) is cls
        for a, b in zip(_both(other(x)), ref, strict=True):
            assert torch.equal(a, b)


# ---- 6. the fused KL kernel (KL-2) ------------------------------------------------------------------------------


def _kl_mpmath(mq: float, sq: float, mp: float, sp: float) -> float:
    import mpmath

    with mpmath.workdps(50):
        mq_, sq_, mp_, sp_ = (mpmath.mpf(v) for v in (mq, sq, mp, sp))
        r = sq_ / sp_
        val = ((mq_ - mp_) / sp_) ** 2 / 2 + (r * r - 1 - 2 * mpmath.log(r)) / 2
        return float(mpmath.nstr(val, 20))


@NATIVE
@pytest.mark.claim("KL-2")
def test_kl_kernel_against_mpmath() -> None:
    """Every order of magnitude of r = sq/sp and of d = (mq - mp)/sp, both sides of the |t| = 1/8 switch
    (r^2 = 7/8, 9/8) and one float32 ulp either side of r = 1. Bound (KL-2): relative error <= u32 (the one
    rounding) + 2^-40 (the float64 evaluation, KL-2's 2^-44 with slack 16) wherever the result is normal."""
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    one = torch.tensor(1.0)
    rs = [10.0**k for k in range(-30, 31, 3)] + [0.5, f32(0.5) * (1 + 2**-23), math.sqrt(7 / 8), math.sqrt(9 / 8),
                                                  float(torch.nextafter(one, 2 * one)), 1.0,
                                                  float(torch.nextafter(one, 0 * one)), 0.999, 1.001, 0.9, 1.1]
    ds = [0.0, 1e-20, 1e-6, 0.3, 1.0, 1e4, 1e12]
    sps = [1e-30, 1.0, 3.0, 1e10]
    mq, sq, mp, sp = [], [], [], []
    for r in rs:
        for d in ds:
            for s_p in sps:
                if r * s_p > 1e37 or r * s_p < 1e-37 or d * s_p > 1e37:
                    continue
                mq.append(f32(d * s_p + 0.25))
                mp.append(0.25)
                sq.append(f32(r * s_p))
                sp.append(s_p)
    t = [torch.tensor(v, dtype=torch.float32) for v in (mq, sq, mp, sp)]
    got = gauss.kl_forward_raw(*t).double()
    ref = torch.tensor([_kl_mpmath(*(float(a[i]) for a in t)) for i in range(len(mq))], dtype=torch.float64)
    ok = ref.abs() >= float(torch.finfo(torch.float32).tiny)
    ok &= ref.abs() <= float(torch.finfo(torch.float32).max)
    rel = ((got - ref).abs() / ref.abs())[ok]
    worst = int(rel.argmax())
    bound = U32 + 2.0**-40
    assert float(rel.max()) <= bound, (float(rel.max()) / U32, [float(a[ok][worst]) for a in t])


@NATIVE
@pytest.mark.claim("KL-2")
def test_kl_kernel_gradients_against_float64() -> None:
    """The hand-written backward: each partial formed in float64 and rounded once, so relative error <= u32
    (+2^-40) against the float64 closed form of the partials, on the same float32 inputs."""
    g = torch.Generator().manual_seed(5)
    n = 1003
    mq = torch.randn(n, generator=g) * 3
    sq = torch.exp(torch.randn(n, generator=g) * 3)
    mp = torch.randn(n, generator=g)
    sp = torch.exp(torch.randn(n, generator=g))
    args = [a.clone().requires_grad_() for a in (mq, sq, mp, sp)]
    kl = kl_normal(*args)
    assert kl.grad_fn is not None and "KLNormalF32" in type(kl.grad_fn).__name__
    up = torch.randn(n, generator=g)
    grads = torch.autograd.grad(kl, args, up)
    q, s, p, r = (a.double() for a in (mq, sq, mp, sp))
    dm = q - p
    ref = [dm / r**2, (s - r) * (s + r) / (r**2 * s), -dm / r**2, ((r - s) * (r + s) - dm * dm) / r**3]
    for got, e in zip(grads, ref, strict=True):
        e = e * up.double()
        rel = (got.double() - e).abs() / e.abs()
        assert float(rel.max()) <= U32 + 2.0**-40


@NATIVE
@pytest.mark.claim("KL-2")
def test_kl_kernel_keeps_kl1_properties() -> None:
    """>= 0, exactly 0 at equality, NaN outside the domain, inf at sq = 0, broadcast priors read as one value."""
    g = torch.Generator().manual_seed(6)
    m = torch.randn(37, generator=g)
    s = torch.rand(37, generator=g) + 0.01
    assert torch.equal(kl_normal(m, s, m, s), torch.zeros(37))
    out = kl_normal(m, s, torch.zeros(()).expand(37), torch.ones(1).expand(37))
    assert bool((out >= 0).all())
    full = kl_normal(m, s, torch.zeros(37), torch.ones(37))
    assert torch.equal(out, full)
    bad = kl_normal(torch.zeros(3), torch.tensor([-1.0, 0.0, 1.0]), torch.zeros(3), torch.tensor([1.0, 1.0, 0.0]))
    assert math.isnan(float(bad[0])) and float(bad[1]) == math.inf and math.isnan(float(bad[2]))
    # The layer's KL() runs it: float32 and float64 layers agree within the float32 rounding of each term.
    layer = BBBLinear(40, 30)
    with torch.no_grad():
        layer.weight_rho.add_(torch.randn(30, 40, generator=g))  # type: ignore[union-attr]
    k32 = layer.KL()[0]
    k64 = copy.deepcopy(layer).double().KL()[0]
    # a sum of 1230 nonnegative terms, each within (u32 + exp's 1 ulp * condition 2) of float64: 1230 + 3 u32
    assert abs(float(k32) - float(k64)) <= (1230 + 3) * U32 * float(k64)
