"""The CUDA kernels of the torch operators.

Every operator (rln_verified::rnorm_forward, rnorm_backward, relu_moments_f32, relu_moments_bwd_f32, exp_clamp_f32)
has a CUDA kernel written in eager torch. None of them reads a data pointer, so on a machine without a GPU the tests
below call each one directly, and through the kernel registered for the CUDA dispatch key, on CPU float32 tensors,
and compare it with a float64 reference. Fake CUDA tensors (FakeTensorMode, no GPU needed) check that the layers
route float32 CUDA calls to the operators. The end-to-end cases (CUDA eager, torch.compile, autocast against the
CPU float64 reference) need a GPU and are skipped, with that reason, where there is none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rln_verified as rv
from rln_verified._bayesian_linear import BBBLinear, CLTLinear, CLTLinearDet, LRLinear
from rln_verified._gaussian import relu_moments
from rln_verified._native import gauss, rnorm
from rln_verified._native.rnorm import PlaneConfig

U32 = 2.0**-24  # float32 unit roundoff
CUDA = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(not CUDA, reason="no GPU on this machine: the CUDA end-to-end cases cannot run here")

OPS: dict[str, Callable[..., Any]] = {
    "rln_verified::rnorm_forward": rnorm.cuda_forward,
    "rln_verified::rnorm_backward": rnorm.cuda_backward,
    "rln_verified::relu_moments_f32": gauss.relu_moments_cuda,
    "rln_verified::relu_moments_bwd_f32": gauss.relu_moments_bwd_cuda,
    "rln_verified::exp_clamp_f32": gauss.exp_clamp_cuda,
}


def _through_cuda_key(name: str, *args: Any) -> Any:
    """Call the kernel registered for the CUDA dispatch key, as the dispatcher does: below the autograd key."""
    kernel = torch.library.get_kernel(name, "CUDA")
    with torch._C._AutoDispatchBelowAutograd():
        return kernel.call_boxed(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_operator_has_a_cuda_kernel(name: str) -> None:
    # The custom ops without device_types have a CompositeExplicitAutograd kernel, which this check does not count:
    # before the CUDA kernels were registered it answered False for them.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")


# ---- rnorm_forward / rnorm_backward -------------------------------------------------------------------------------

CASES = [  # (two_d, bayes, affine mode)
    (True, True, 1), (True, False, 1), (False, True, 2), (False, False, 2), (True, True, 0), (False, True, 0),
]


def _rnorm_args(two_d: bool, bayes: bool, mode: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                torch.Tensor | None, torch.Tensor, PlaneConfig]:
    torch.manual_seed(0)
    if two_d:
        x = torch.randn(2, 3, 5, 6) * 3.0 + 1.0
        w, b, p, l_ = torch.rand(3) + 0.5, torch.randn(3), 5, 6
    else:
        x = torch.randn(3, 4, 8) * 3.0 + 1.0
        w, b, p, l_ = torch.rand(4, 8) + 0.5, torch.randn(4, 8), 4, 8
    if mode == 0:
        w = b = None
    lam = torch.tensor([0.3])
    return x, w, b, lam, PlaneConfig(1e-3, 1.0, 1e-5, 0.7 if bayes else 0.0, bayes, two_d, mode, p, l_)


def _plane_stats(x: torch.Tensor, cfg: PlaneConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (x_c, sigma per group broadcast to x, max|x| of the input) for the bounds."""
    planes = x.double().reshape(-1, cfg.p * cfg.l)
    xc = planes - planes.mean(dim=1, keepdim=True)
    sigma = torch.sqrt(xc.square().mean(dim=1, keepdim=True) + cfg.eps)
    return xc.reshape(x.shape), sigma.expand_as(planes).reshape(x.shape), x.abs().amax().double()


def _delta32(n: int, a_over_sigma: float) -> float:
    """N11's centring term with float32 centring: the CUDA kernel forms x s - mean in float32 (the plain formula),
    whose sums carry (n - 1) u32 sum|terms| instead of (n - 1) 2^-53 sum|terms|. N11's proof then gives its bound with
    2^-46 = 2^7 2^-53 replaced by 2^7 u32 = 2^-17; everything after the centring is float64 in both, as N11 states.
    For the gradients the (n + 8)^2 of N11 becomes (n + 8): the float32 sums are those of the forward centring and of
    its VJP, one sum of n terms each, and the float64 ones are covered by the 2^-40 relative term."""
    return 2.0**-17 * (n + 8) * (1.0 + a_over_sigma)


@pytest.mark.parametrize(("two_d", "bayes", "mode"), CASES)
def test_cuda_forward_matches_the_float64_formula(two_d: bool, bayes: bool, mode: int) -> None:
    x, w, b, lam, cfg = _rnorm_args(two_d, bayes, mode)
    y, u, stats = rnorm.cuda_forward(x, w, b, lam, *cfg)
    y_ref, u_ref = rnorm.plain(x.double(), None if w is None else w.double(), None if b is None else b.double(),
                                 lam.double(), cfg)
    _, sigma, a = _plane_stats(x, cfg)
    m = cfg.p * cfg.l
    gamma = 1.0 if w is None else float(w.abs().max())
    delta = _delta32(m, float(a / sigma.min()))
    # The final rounding to float32 adds u32 |y|; the float64 reference's own error sits in 2^-40 (N11).
    tol_y = (2 * U32 + 2.0**-40) * y_ref.abs() + gamma * delta
    err_y = (y.double() - y_ref).abs()
    assert bool((err_y <= tol_y).all()), f"worst |y - y_ref| {float(err_y.max()):.3e}, bound {float(tol_y.min()):.3e}"
    tol_u = (2 * U32 + 2.0**-40) * u_ref.abs() + delta
    err_u = (u.double() - u_ref).abs()
    assert bool((err_u <= tol_u).all()), f"worst |u - u_ref| {float(err_u.max()):.3e}"
    assert stats.shape == (u.numel(), 4) and stats.dtype == torch.float64  # the placeholder the schema promises
    if rnorm.available():  # the fused CPU kernel computes the same formula: within both bounds of each other
        y_c, u_c, _ = rnorm._run_forward(x, w, b, lam, cfg)
        assert bool(((y.double() - y_c.double()).abs() <= 2 * tol_y).all())
        assert bool(((u.double() - u_c.double()).abs() <= 2 * tol_u).all())


@pytest.mark.parametrize(("two_d", "bayes", "mode"), CASES)
def test_cuda_backward_is_the_vjp_of_the_float64_formula(two_d: bool, bayes: bool, mode: int) -> None:
    x, w, b, lam, cfg = _rnorm_args(two_d, bayes, mode)
    _, _, stats = rnorm.cuda_forward(x, w, b, lam, *cfg)
    gen = torch.Generator().manual_seed(5)
    groups = x.numel() // (cfg.p * cfg.l)
    gy, gu = torch.randn(x.shape, generator=gen), torch.randn(groups, generator=gen)
    gx, g_w, g_b, g_l = rnorm.cuda_backward(x, w, lam, stats, gy, gu, *cfg, w is not None, w is not None)
    # The reference: autograd through the formula in float64 at the same float32 values.
    x64 = x.double().requires_grad_()
    lam64 = lam.double().requires_grad_()
    w64 = None if w is None else w.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    y64, u64 = rnorm.plain(x64, w64, b64, lam64, cfg)
    ins = [t for t in (x64, lam64, w64, b64) if t is not None]
    outs, cots = ((y64, u64), (gy.double(), gu.double())) if bayes else ((y64,), (gy.double(),))
    refs = torch.autograd.grad(outs, ins, cots)
    xc, sigma, a = _plane_stats(x, cfg)
    m = cfg.p * cfg.l
    a_s = float(a / sigma.min())
    gamma = torch.ones(()) if w is None else (w.double().reshape(-1, 1, 1) if mode == 1 else w.double())
    gmax = float(gamma.abs().max())
    # S of N11 for each gradient (upper bounds, taken over every entry).
    s_x = gmax * float(gy.abs().max()) / float(sigma.min()) + cfg.alpha * 1.0 * float(gu.abs().max()) / float(
        sigma.min())
    s_w = float((gy.double().abs() * xc.abs() / sigma).sum())
    s_b = float(gy.abs().sum())
    s_l = float((gy.double().abs() * (gamma * xc).abs() / sigma).sum() + 2 * gu.abs().sum())
    got = [gx, g_l] + ([g_w, g_b] if w is not None else [])
    scales = [(m, s_x), (m * groups, s_l)] + ([(m * groups, s_w), (m * groups, s_b)] if w is not None else [])
    for name, g, ref, (n, s) in zip(["x", "lambda", "weight", "bias"], got, refs, scales, strict=False):
        assert ref is not None
        tol = (2 * U32 + 2.0**-40) * ref.abs() + _delta32(n, a_s) * s
        err = (g.double() - ref).abs()
        assert bool((err <= tol).all()), f"grad {name}: worst {float(err.max()):.3e}, bound {float(tol.min()):.3e}"


@pytest.mark.parametrize(("two_d", "bayes", "mode"), CASES[:3])
def test_the_registered_cuda_kernels_are_these_functions(two_d: bool, bayes: bool, mode: int) -> None:
    """Through the CUDA dispatch key, below autograd as the dispatcher runs a kernel, the answers are the same bits
    as the direct calls: so the backward's torch.func.vjp works where autograd.grad would see no graph."""
    x, w, b, lam, cfg = _rnorm_args(two_d, bayes, mode)
    direct = rnorm.cuda_forward(x, w, b, lam, *cfg)
    via = _through_cuda_key("rln_verified::rnorm_forward", x, w, b, lam, *cfg)
    assert all(torch.equal(d, v) for d, v in zip(direct, via, strict=True))
    gy, gu = torch.randn_like(x), torch.randn(direct[1].numel())
    args = (x, w, lam, direct[2], gy, gu, *cfg, w is not None, w is not None)
    d_b = rnorm.cuda_backward(*args)
    v_b = _through_cuda_key("rln_verified::rnorm_backward", *args)
    assert all(torch.equal(d, v) for d, v in zip(d_b, v_b, strict=True))


def test_cuda_kernels_check_dtype_and_shapes() -> None:
    x, w, b, lam, cfg = _rnorm_args(True, True, 1)
    with pytest.raises(TypeError, match=r"x must be torch\.float32"):
        rnorm.cuda_forward(x.double(), w, b, lam, *cfg)
    with pytest.raises(ValueError, match="weight has 2 elements"):
        rnorm.cuda_forward(x, w[:2], b, lam, *cfg)
    with pytest.raises(ValueError, match="bias must have 3"):
        rnorm.cuda_forward(x, w, b[:2], lam, *cfg)
    with pytest.raises(ValueError, match="lambda must have 1"):
        rnorm.cuda_forward(x, w, b, torch.tensor([0.3, 0.4]), *cfg)
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        rnorm.cuda_forward(x, w, b, lam, *cfg._replace(mode=3))
    _, _, stats = rnorm.cuda_forward(x, w, b, lam, *cfg)
    with pytest.raises(ValueError, match="grad of y"):
        rnorm.cuda_backward(x, w, lam, stats, x[:1], None, *cfg, True, True)
    with pytest.raises(ValueError, match="stats must be"):
        rnorm.cuda_backward(x, w, lam, stats[:1], x, None, *cfg, True, True)
    mu = torch.randn(4)
    with pytest.raises(TypeError, match=r"must be torch\.float32"):
        gauss.relu_moments_cuda(mu.double(), mu.double())
    with pytest.raises(ValueError, match="shape"):
        gauss.relu_moments_cuda(mu, mu[:2])
    with pytest.raises(ValueError, match="aux must be"):
        gauss.relu_moments_bwd_cuda(mu, mu, mu, mu.abs(), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"must be torch\.float32"):
        gauss.exp_clamp_cuda(mu.half(), -3.0, 3.0, False)


# ---- relu_moments / exp_clamp -----------------------------------------------------------------------------------


def _gauss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    mu = torch.randn(400) * torch.logspace(-3, 2, 400)
    s = torch.rand(400) * torch.logspace(-2, 1, 400) + 1e-3
    return mu, s


def test_relu_moments_cuda_matches_the_float64_kernel() -> None:
    """The CUDA kernel evaluates RELU-1/RELU-4's eager forms in float64 and rounds once: the float64 eager kernel on
    the same values, rounded to float32, is the same number (no other rounding happens in either)."""
    mu, s = _gauss_inputs()
    mean, var, aux = gauss.relu_moments_cuda(mu, s)
    m64, v64 = relu_moments(mu.double(), s.double())
    assert torch.equal(mean, m64.float()) and torch.equal(var, v64.float())
    assert aux.shape == (gauss.NAUX * mu.numel(),) and aux.dtype == torch.float64
    via = _through_cuda_key("rln_verified::relu_moments_f32", mu, s)
    assert all(torch.equal(d, v) for d, v in zip((mean, var, aux), via, strict=True))


def test_relu_moments_bwd_cuda_matches_the_closed_form_float64_backward() -> None:
    """RELU-5's closed form (the float64 eager kernel's backward) against autograd through the eager forms (the CUDA
    kernel): the same derivative evaluated two ways in float64 (each within RELU-4's 1e-12 < 2^-39 relative of its
    terms), then rounded once to float32 (u32 |g|). The terms are bounded by |g_mean| (|dE/dmu| = Phi <= 1,
    |dE/dsigma| = phi <= 1) and 2 |g_var| (|mu| + sigma) (the variance's derivatives), whence the bound."""
    mu, s = _gauss_inputs()
    gen = torch.Generator().manual_seed(7)
    gm, gv = torch.randn(mu.shape, generator=gen), torch.randn(mu.shape, generator=gen)
    _, _, aux = gauss.relu_moments_cuda(mu, s)
    g_mu, g_s = gauss.relu_moments_bwd_cuda(gm, gv, mu, s, aux)
    mu64, s64 = mu.double().requires_grad_(), s.double().requires_grad_()
    ref_mu, ref_s = torch.autograd.grad(relu_moments(mu64, s64), (mu64, s64), (gm.double(), gv.double()))
    terms = gm.double().abs() + 2 * gv.double().abs() * (mu.double().abs() + s.double())
    for g, ref in ((g_mu, ref_mu), (g_s, ref_s)):
        tol = U32 * ref.abs() + 2.0**-36 * terms
        err = (g.double() - ref).abs()
        assert bool((err <= tol).all()), f"worst {float(err.max()):.3e} at {int(err.argmax())}"
    via = _through_cuda_key("rln_verified::relu_moments_bwd_f32", gm, gv, mu, s, aux)
    assert torch.equal(via[0], g_mu) and torch.equal(via[1], g_s)


@pytest.mark.parametrize("square", [False, True])
def test_exp_clamp_cuda_matches_float64_exp(square: bool) -> None:
    """torch's float32 exp is within 2 ulp (CUDA's expf bound; Sleef's on CPU is 1), an ulp being <= 2 u32 |x|; the
    clamp is exact, with lo and hi rounded to float32 as torch.clamp rounds them; squaring doubles the relative error
    and rounds once more: 4 u32 (8 u32 + u32 squared) relative."""
    rho = torch.linspace(-30.0, 30.0, 1001)
    lo, hi = -20.0, 5.0
    out = gauss.exp_clamp_cuda(rho, lo, hi, square)
    ref = torch.exp(rho.double().clamp(float(torch.tensor(lo)), float(torch.tensor(hi))))
    ref = ref * ref if square else ref
    rel = ((out.double() - ref).abs() / ref)
    bound = 9 * U32 if square else 4 * U32
    assert float(rel.max()) <= bound, f"worst relative error {float(rel.max()):.3e} at rho={float(rho[rel.argmax()])}"
    assert torch.equal(_through_cuda_key("rln_verified::exp_clamp_f32", rho, lo, hi, square), out)


# ---- routing: fake CUDA tensors need no GPU ------------------------------------------------------------------------

_ROUTING = textwrap.dedent("""
    import json, torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    import rln_verified as rv
    from rln_verified._bayesian_linear import BBBLinear, CLTLinear, CLTLinearDet, LRLinear

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func).startswith("rln_verified."):
                self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    cases = {
        "RLayerNorm2d": (rv.RLayerNorm2d(3), ((2, 3, 5, 6),)),
        "BayesianRLayerNorm2d": (rv.BayesianRLayerNorm2d(3), ((2, 3, 5, 6),)),
        "RLayerNorm": (rv.RLayerNorm((4, 8)), ((3, 4, 8),)),
        "BayesianRLayerNorm": (rv.BayesianRLayerNorm((4, 8)), ((3, 4, 8),)),
        "BBBLinear": (BBBLinear(8, 4), ((5, 8),)),
        "LRLinear": (LRLinear(8, 4), ((5, 8),)),
        "CLTLinear": (CLTLinear(8, 4, is_input=True), ((5, 8),)),
        "CLTLinearDet": (CLTLinearDet(8, 4), ((5, 8), (5, 8))),
    }
    out = {}
    for name, (layer, shapes) in cases.items():
        meta = {k: (v.shape, v.dtype) for k, v in layer.state_dict().items()}
        with FakeTensorMode():
            state = {k: torch.empty(sh, dtype=dt, device="cuda") for k, (sh, dt) in meta.items()}
            args = tuple(torch.rand(sh, device="cuda") for sh in shapes)
            # no_grad: a CPU-only build has no CUDA device guard for the autograd engine to use
            with Log() as log, torch.no_grad():
                torch.func.functional_call(layer, state, args)
        out[name] = sorted(log.ops)
    print(json.dumps(out))
""")

ROUTES = {
    "RLayerNorm2d": ["rln_verified.rnorm_forward.default"],
    "BayesianRLayerNorm2d": ["rln_verified.rnorm_forward.default"],
    "RLayerNorm": ["rln_verified.rnorm_forward.default"],
    "BayesianRLayerNorm": ["rln_verified.rnorm_forward.default"],
    "BBBLinear": ["rln_verified.exp_clamp_f32.default"],
    "LRLinear": ["rln_verified.exp_clamp_f32.default"],
    "CLTLinear": ["rln_verified.exp_clamp_f32.default", "rln_verified.relu_moments_f32.default"],
    "CLTLinearDet": ["rln_verified.relu_moments_f32.default"],
}


def test_float32_cuda_calls_take_the_operators() -> None:
    """Eager float32 CUDA calls reach the operators (so CUDA eager, compile and autocast share one path), checked on
    fake CUDA tensors in a child process (a CPU-only build aborts, not raises, on some CUDA device queries)."""
    run = subprocess.run([sys.executable, "-c", _ROUTING], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == ROUTES


# ---- end to end on a GPU -------------------------------------------------------------------------------------------

NORMS: list[tuple[type[nn.Module], Any, tuple[int, ...]]] = [
    (rv.RLayerNorm2d, 3, (2, 3, 5, 6)),
    (rv.BayesianRLayerNorm2d, 3, (2, 3, 5, 6)),
    (rv.RLayerNorm, (4, 8), (3, 4, 8)),
    (rv.BayesianRLayerNorm, (4, 8), (3, 4, 8)),
]


def _norm_pair(cls: type[nn.Module], arg: Any) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    m32 = cls(arg)
    with torch.no_grad():
        m32.weight.uniform_(0.5, 1.5)
        m32.bias.uniform_(-1.0, 1.0)
    m64 = cls(arg, dtype=torch.float64)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    return m32.cuda(), m64


@NEEDS_GPU
@pytest.mark.parametrize("mode", ["eager", "compile", "autocast_bf16", "autocast_fp16"])
@pytest.mark.parametrize(("cls", "arg", "shape"), NORMS, ids=[c.__name__ for c, _, _ in NORMS])
def test_norm_layers_on_cuda_match_the_cpu_float64_reference(cls: type[nn.Module], arg: Any, shape: tuple[int, ...],
                                                             mode: str) -> None:
    m32, m64 = _norm_pair(cls, arg)
    x64 = (torch.randn(shape, dtype=torch.float64) * 3.0 + 1.0)
    if mode.startswith("autocast"):
        dt = torch.bfloat16 if mode.endswith("bf16") else torch.float16
        x64 = x64.to(dt).double()  # the layer upcasts the low-precision input exactly
        xc = x64.to(dt).cuda().requires_grad_()
        with torch.autocast("cuda", dtype=dt):
            y = m32(xc)
        assert y.dtype == torch.float32  # as torch's layer_norm/group_norm under autocast
    else:
        x64 = x64.float().double()
        xc = x64.float().cuda().requires_grad_()
        fn = torch.compile(m32, fullgraph=True) if mode == "compile" else m32
        y = fn(xc)
    gy = torch.randn(shape, dtype=torch.float64)
    (y * gy.to(y.device, y.dtype)).sum().backward()
    xr = x64.clone().requires_grad_()
    y64 = m64(xr)
    (y64 * gy).sum().backward()
    # The same formula as the CPU float32 path: N11's bound with float32 centring (test_cuda_forward_... above).
    m = shape[-1] * shape[-2]
    planes = x64.reshape(-1, m)
    sigma = torch.sqrt((planes - planes.mean(1, keepdim=True)).square().mean(1) + 1e-5).min()
    delta = _delta32(m, float(x64.abs().max() / sigma))
    gamma = float(m32.weight.abs().max())
    assert bool(((y.double().cpu() - y64).abs() <= 3 * U32 * y64.abs() + gamma * delta).all())
    assert xc.grad is not None and xr.grad is not None
    s_x = gamma * float(gy.abs().max()) / float(sigma)
    tol = 3 * U32 * xr.grad.abs() + _delta32(m, float(x64.abs().max() / sigma)) * s_x
    assert bool(((xc.grad.double().cpu() - xr.grad).abs() <= tol).all())


BAYES: list[type[nn.Module]] = [BBBLinear, LRLinear, CLTLinear, CLTLinearDet]


@NEEDS_GPU
@pytest.mark.parametrize("mode", ["eager", "compile", "autocast_bf16"])
@pytest.mark.parametrize("cls", BAYES, ids=[c.__name__ for c in BAYES])
def test_bayesian_layers_on_cuda_match_the_cpu_float64_reference(cls: type[nn.Module], mode: str) -> None:
    """MAP-free forward with the noise fixed to zero is deterministic: mean pass of each layer against float64.
    Tolerance: a float32 linear layer of 16 inputs (gamma_16 u32 sum|terms|, with the 2-ulp exp of exp_clamp) and,
    under autocast, the same computation (the layers compute in float32 with autocast off inside)."""
    torch.manual_seed(0)
    kw: dict[str, Any] = {"is_input": True} if cls is CLTLinear else {}
    layer = cls(16, 8, **kw)
    layer64 = cls(16, 8, dtype=torch.float64, **kw)
    layer64.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    layer = layer.cuda()
    x = torch.randn(4, 16)
    args32: tuple[Any, ...] = (x.cuda(),) if cls is not CLTLinearDet else (x.cuda(), x.abs().cuda())
    args64: tuple[Any, ...] = tuple(a.double().cpu() for a in args32)
    for lyr in (layer, layer64):
        for name in ("_random_weight", "_random_bias"):
            if hasattr(lyr, name) and isinstance(getattr(lyr, name), torch.Tensor):
                getattr(lyr, name).zero_()
    if mode == "compile":
        out = torch.compile(layer, fullgraph=True)(*args32)
    elif mode == "autocast_bf16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(*args32)
    else:
        out = layer(*args32)
    ref = layer64(*args64)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(outs, refs, strict=True):
        if o is None or r is None:
            continue
        # bf16 output: one rounding to bfloat16 (2^-8 relative) on top of the float32 computation.
        rel = 2.0**-8 if mode == "autocast_bf16" else 0.0
        tol = (rel + 40 * U32) * (r.abs() + 1.0)
        assert bool(((o.double().cpu() - r).abs() <= tol).all())
