"""The fused float32 CPU kernels of ``_native/gauss.c``, built on first use: the ReLU moments of a Gaussian and
their backward (RELU-6), the exp of the Bayesian layers' posterior std (EXP-1), and the Gaussian KL with its
gradients (KL-2).

Every call checks its tensors in Python before a pointer crosses (float32 or, for ``aux``, float64; CPU;
contiguous; the expected number of elements), and raises TypeError/ValueError otherwise. The kernels are also
``torch.library`` operators (``rln_verified::relu_moments_f32``, ``rln_verified::relu_moments_bwd_f32``,
``rln_verified::exp_clamp_f32``) with fake kernels and autograd, which the callers use while something records
the call (``_dispatch.recording()``) or on meta tensors.

Built and loaded like the R-LayerNorm kernel (``_native/toolchain.py``). When no compiler is
found, the build fails, or ``RLN_VERIFIED_NATIVE=0`` is set, :func:`available` is False:
:func:`rln_verified.functional.relu_moments` then uses its eager float64 kernel, which evaluates the same forms, and
the layers' std uses ``torch.exp``. :func:`disabled` routes calls to those eager paths inside a block.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch

from rln_verified._dispatch import is_wrapped, plain_f32, recompute_vjp
from rln_verified._gaussian_formula import relu_moments_f64
from rln_verified._native import gauss_triton
from rln_verified._native.toolchain import Kernel
from rln_verified._native.toolchain import ptr as _p

#: float64 planes kept per element for the backward: the mean, phi(|a|) and Q(|a|) (gauss.c, fwd_block).
NAUX = 3

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


def _setup(lib: ctypes.CDLL) -> None:
    lib.rln_relu_moments_fwd_f32.argtypes = [_ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr]
    lib.rln_relu_moments_bwd_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr]
    lib.rln_exp_clamp_f32.argtypes = [_ptr, _i64, ctypes.c_float, ctypes.c_float, _int, _ptr, _ptr, _ptr]
    lib.rln_exp_f32_max_ulp.argtypes = [ctypes.c_float, ctypes.c_float, _i64, _ptr]
    lib.rln_exp_f32_max_ulp.restype = ctypes.c_double
    lib.rln_kl_normal_fwd_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _ptr]
    lib.rln_kl_normal_bwd_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64,
                                          _ptr, _ptr, _ptr, _ptr]
    for fn in (lib.rln_relu_moments_fwd_f32, lib.rln_relu_moments_bwd_f32, lib.rln_exp_clamp_f32,
               lib.rln_kl_normal_fwd_f32, lib.rln_kl_normal_bwd_f32):
        fn.restype = _int


KERNEL = Kernel("gauss.c", "rln_gauss_abi_version", 4, _setup)
library, available, disabled, reason = KERNEL.library, KERNEL.available, KERNEL.disabled, KERNEL.reason


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernel applies: float32 CPU tensors, not wrapped by torch.func, not under torch.compile."""
    return not torch.compiler.is_compiling() and plain_f32(*tensors) and available()


# ---- the C boundary: nothing crosses unchecked ----------------------------------------------------------------

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _check(fn: str, name: str, t: object, n: int | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``t`` may cross into C as ``n`` elements of ``dtype``: a plain (no subclass, no fake, no functorch wrapper)
    contiguous CPU tensor. Raises TypeError (type, dtype) or ValueError (device, layout, size) otherwise."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if type(t) not in _PLAIN_TYPES or is_wrapped(t):
        raise TypeError(f"{fn}: {name} must be a plain tensor (the C kernel reads its memory), got "
                        f"{type(t).__name__}; call the torch.library op rln_verified::* under tracing instead")
    if t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be {dtype}, got {t.dtype}; cast with .to({dtype}) first")
    if t.device.type != "cpu":
        raise ValueError(f"{fn}: {name} must be on the CPU, got device {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous, got strides {tuple(t.stride())}; call .contiguous()")
    if n is not None and t.numel() != n:
        raise ValueError(f"{fn}: {name} must have {n} elements, got {t.numel()} (shape {tuple(t.shape)})")
    return t


def _check_same_shape(fn: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{fn}: {name} must have the shape {tuple(ref.shape)} of mu, got {tuple(t.shape)}")


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"the gauss.c kernel is not available ({reason()})")
    return lib


def forward_raw(mu: torch.Tensor, s: torch.Tensor,
                v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, var, aux)`` of relu(N(mu, sigma^2)) for contiguous float32 CPU tensors of one shape (no autograd);
    ``aux`` holds the float64 planes the backward reads. ``s`` is sigma, or, with a variance ``v``, torch's
    ``sqrt(v)``: sigma is then ``sqrt(clamp_min(v, 2^-126))`` bit for bit (the CLT layers' ``safe_sqrt``).

    Raises:
        TypeError, ValueError: a tensor that is not float32, CPU, contiguous and of mu's shape."""
    fn = "relu_moments forward_raw"
    n = _check(fn, "mu", mu, None).numel()
    _check(fn, "s", s, n)
    if v is not None:
        _check(fn, "v", v, n)
    _check_same_shape(fn, mu, s=s, v=v)
    lib = _lib()
    mean, var = torch.empty_like(mu), torch.empty_like(mu)
    aux = torch.empty(NAUX * n, dtype=torch.float64, device="cpu")  # not the default device: C writes it
    rc = lib.rln_relu_moments_fwd_f32(mu.data_ptr(), s.data_ptr(), _p(v), n, mean.data_ptr(), var.data_ptr(),
                                      aux.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native relu_moments kernel failed (code {rc}) on {n} elements")
    return mean, var, aux


def backward_raw(g_mean: torch.Tensor | None, g_var: torch.Tensor | None, mu: torch.Tensor, s: torch.Tensor,
                 v: torch.Tensor | None, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dmu, dL/ds)`` (``dL/dv`` with a variance ``v``, 0 where ``v < 2^-126``) from ``dL/dmean``, ``dL/dvar``
    (None: zero; any float dtype and layout of mu's shape, converted here) and the forward's ``aux`` (no autograd).

    Raises:
        TypeError, ValueError: mu, s, v not float32 CPU contiguous of one shape, aux not float64 of NAUX * n."""
    fn = "relu_moments backward_raw"
    n = _check(fn, "mu", mu, None).numel()
    _check(fn, "s", s, n)
    if v is not None:
        _check(fn, "v", v, n)
    _check(fn, "aux", aux, NAUX * n, torch.float64)
    _check_same_shape(fn, mu, s=s, v=v, g_mean=g_mean, g_var=g_var)
    gm = torch.zeros_like(mu) if g_mean is None else g_mean.to(torch.float32).contiguous()
    gv = torch.zeros_like(mu) if g_var is None else g_var.to(torch.float32).contiguous()
    _check(fn, "g_mean", gm, n)
    _check(fn, "g_var", gv, n)
    lib = _lib()
    g_mu, g_s = torch.empty_like(mu), torch.empty_like(mu)
    rc = lib.rln_relu_moments_bwd_f32(gm.data_ptr(), gv.data_ptr(), mu.data_ptr(), s.data_ptr(), _p(v), aux.data_ptr(),
                                      n, g_mu.data_ptr(), g_s.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native relu_moments kernel failed (code {rc}) on {n} elements")
    return g_mu, g_s


def exp_clamp(rho: torch.Tensor, lo: float, hi: float, square: bool,
              w: torch.Tensor | None = None) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
    """``(exp(clamp(rho, lo, hi)) [squared], saturated, w * w)`` for a contiguous float32 CPU ``rho`` (no autograd),
    the exp of EXP-1 (within 1 ulp, exhaustively checked); ``saturated``: some element was clamped or NaN. ``lo``
    and ``hi`` are rounded to float32, as ``torch.clamp`` rounds them for a float32 tensor. ``w`` (optional, of
    ``rho``'s shape): its square is formed in the same pass.

    Raises:
        TypeError, ValueError: rho or w not float32 CPU contiguous, w not of rho's shape."""
    fn = "exp_clamp"
    n = _check(fn, "rho", rho, None).numel()
    if w is not None:
        _check(fn, "w", w, n)
        _check_same_shape(fn, rho, w=w)
    lib = _lib()
    out = torch.empty_like(rho)
    w2 = torch.empty_like(w) if w is not None else None
    sat = lib.rln_exp_clamp_f32(rho.data_ptr(), n, float(lo), float(hi), int(square), out.data_ptr(), _p(w), _p(w2))
    return out, bool(sat), w2


def exp_max_ulp(lo: float, hi: float, stride: int = 1) -> tuple[float, float]:
    """EXP-1's check: ``(worst error in ulps, where)`` of the kernel's exp over every ``stride``-th float32 from ``lo``
    to ``hi`` (``hi`` included; ``stride=1``: every one, about 40 s for the std's range) against the C library's
    float64 exp.

    Raises:
        TypeError: lo, hi not real numbers or stride not an int. ValueError: stride < 1 or lo > hi or not finite."""
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"exp_max_ulp: {name} must be a real number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"exp_max_ulp: {name} must be finite, got {v}")
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"exp_max_ulp: stride must be an int, got {type(stride).__name__}")
    if stride < 1 or lo > hi:
        raise ValueError(f"exp_max_ulp: needs stride >= 1 and lo <= hi, got stride={stride}, lo={lo}, hi={hi}")
    lib = _lib()
    where = ctypes.c_float(0.0)
    worst = float(lib.rln_exp_f32_max_ulp(lo, hi, stride, ctypes.byref(where)))
    return worst, float(where.value)


def _kl_arg(fn: str, name: str, t: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """A KL argument as ``(buffer, inc)``: one value broadcast to every element (all strides 0) crosses as one float
    with inc 0, anything else as a contiguous plane of n floats with inc 1."""
    if t.numel() == n and n > 0 and all(st == 0 for st in t.stride()):
        one = t.reshape(-1)[:1].contiguous()
        return _check(fn, name, one, 1), 0
    c = t.contiguous()
    return _check(fn, name, c, n), 1


def kl_forward_raw(mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """KL(N(mq, sq^2) || N(mp, sp^2)) elementwise for float32 CPU tensors of one shape (KL-2; no autograd). A tensor
    expanded from one element is read as that element.

    Raises:
        TypeError, ValueError: a tensor not float32 on the CPU, or not of mq's shape."""
    fn = "kl_normal forward_raw"
    _check_same_shape(fn, mq, sq=sq, mp=mp, sp=sp)
    n = mq.numel()
    bufs = [_kl_arg(fn, nm, t, n) for nm, t in (("mu_q", mq), ("sigma_q", sq), ("mu_p", mp), ("sigma_p", sp))]
    lib = _lib()
    out = torch.empty(mq.shape, dtype=torch.float32, device="cpu")
    rc = lib.rln_kl_normal_fwd_f32(*(b.data_ptr() for b, _ in bufs), n, *(i for _, i in bufs), out.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native kl_normal kernel failed (code {rc}) on {n} elements")
    return out


def kl_backward_raw(g: torch.Tensor, mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor,
                    need: tuple[bool, bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """The gradients of KL-2 (B) with respect to ``(mq, sq, mp, sp)`` times ``g``, each formed in float64 and rounded
    once (None where ``need`` is False; no autograd).

    Raises:
        TypeError, ValueError: a tensor not float32 on the CPU, or not of mq's shape."""
    fn = "kl_normal backward_raw"
    _check_same_shape(fn, mq, g=g, sq=sq, mp=mp, sp=sp)
    n = mq.numel()
    bufs = [_kl_arg(fn, nm, t, n)
            for nm, t in (("grad", g), ("mu_q", mq), ("sigma_q", sq), ("mu_p", mp), ("sigma_p", sp))]
    outs = [torch.empty(mq.shape, dtype=torch.float32, device="cpu") if w else None for w in need]
    lib = _lib()
    rc = lib.rln_kl_normal_bwd_f32(*(b.data_ptr() for b, _ in bufs), n, *(i for _, i in bufs), *(_p(o) for o in outs))
    if rc != 0:
        raise RuntimeError(f"native kl_normal kernel failed (code {rc}) on {n} elements")
    return tuple(outs)


# ---- plain-torch formulas (every order of autograd, every transform) -----------------------------------------


def relu_moments_plain(mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager forms of RELU-1/RELU-4 in float64 plain torch, cast back to ``mu``'s dtype: the formula that
    :func:`rln_verified._dispatch.recompute_vjp` differentiates and torch.func transforms run."""
    mean, var = relu_moments_f64(mu.to(torch.float64), s.to(torch.float64))
    return mean.to(mu.dtype), var.to(mu.dtype)


def exp_clamp_plain(rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
    sd = torch.exp(rho.clamp(lo, hi))
    return sd * sd if square else sd


# ---- the kernels as torch.library operators (compile, export, jit.trace, fake and meta tensors) ----------------


def _shape_check(ok: Any, msg: str) -> None:
    """A fake kernel's check (symbolic sizes included), as torch._check."""
    torch._check(ok, lambda: msg)  # type: ignore[no-untyped-call]


@torch.library.custom_op("rln_verified::relu_moments_f32", mutates_args=())
def relu_moments_op(mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RELU-6 as an operator: ``(mean, var, aux)`` for float32 ``mu``, ``s`` of one shape (CPU); ``aux`` is the
    float64 state its backward op reads. Without the built kernel it runs the eager forms (aux then zeros)."""
    if library() is None:
        mean, var = relu_moments_plain(mu, s)
        return mean, var, torch.zeros(NAUX * mu.numel(), dtype=torch.float64, device=mu.device)
    return forward_raw(mu.contiguous(), s.contiguous())


@relu_moments_op.register_fake
def _(mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _shape_check(mu.shape == s.shape, "relu_moments_f32: mu and s must have one shape")
    _shape_check(mu.dtype == torch.float32 and s.dtype == torch.float32, "relu_moments_f32: float32 only")
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(mu, memory_format=torch.contiguous_format),
            mu.new_empty((NAUX * mu.numel(),), dtype=torch.float64))


@torch.library.custom_op("rln_verified::relu_moments_bwd_f32", mutates_args=())
def relu_moments_bwd_op(g_mean: torch.Tensor, g_var: torch.Tensor, mu: torch.Tensor, s: torch.Tensor,
                        aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RELU-5 through the kernel: ``(dL/dmu, dL/ds)`` from the upstream gradients and the forward op's ``aux``."""
    if library() is None:
        return recompute_plain_relu_vjp(g_mean, g_var, mu, s)
    return backward_raw(g_mean, g_var, mu.contiguous(), s.contiguous(), None, aux)


@relu_moments_bwd_op.register_fake
def _(g_mean: torch.Tensor, g_var: torch.Tensor, mu: torch.Tensor, s: torch.Tensor,
      aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _shape_check(aux.numel() == NAUX * mu.numel(), "relu_moments_bwd_f32: aux must have NAUX * n elements")
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(mu, memory_format=torch.contiguous_format))


def recompute_plain_relu_vjp(g_mean: torch.Tensor, g_var: torch.Tensor, mu: torch.Tensor,
                             s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VJP of :func:`relu_moments_plain` (no graph): the backward op's CUDA kernel, and its CPU kernel where the
    C kernel is not built. ``torch.func.vjp``, not ``torch.autograd.grad``: an operator's kernel runs below the
    dispatcher's autograd key, where ``autograd.grad`` would see no graph."""
    vjp_fn = torch.func.vjp(relu_moments_plain, mu, s)[1]
    g_mu, g_s = vjp_fn((g_mean, g_var))
    return g_mu.contiguous(), g_s.contiguous()


def _relu_op_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    mu, s = inputs
    ctx.save_for_backward(mu, s, output[2])


def _relu_op_backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None,
                      _g_aux: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    mu, s, aux = ctx.saved_tensors
    if torch.is_grad_enabled():  # a graph is asked for: differentiate the plain formula (every order)
        out = recompute_vjp(relu_moments_plain, (mu, s), ctx.needs_input_grad, (g_mean, g_var))
        return out[0], out[1]
    gm = torch.zeros_like(mu) if g_mean is None else g_mean
    gv = torch.zeros_like(mu) if g_var is None else g_var
    g_mu, g_s = relu_moments_bwd_op(gm, gv, mu, s, aux)
    return g_mu, g_s


relu_moments_op.register_autograd(_relu_op_backward, setup_context=_relu_op_setup)


def _relu_bwd_op_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(*inputs[:4])


def _relu_bwd_op_backward(ctx: Any, gg_mu: torch.Tensor | None, gg_s: torch.Tensor | None) -> tuple[Any, ...]:
    # Second order through the backward op: the VJP of the plain formula's VJP, built by autograd.
    g_mean, g_var, mu, s = ctx.saved_tensors

    def vjp(gm: torch.Tensor, gv: torch.Tensor, m: torch.Tensor, sd: torch.Tensor) -> tuple[torch.Tensor, ...]:
        res = recompute_vjp(relu_moments_plain, (m, sd), (True, True), (gm, gv))
        return tuple(r if r is not None else torch.zeros_like(m) for r in res)

    ins = tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in (g_mean, g_var, mu, s))
    out = recompute_vjp(vjp, ins, ctx.needs_input_grad[:4], (gg_mu, gg_s))
    return (*out, None)


relu_moments_bwd_op.register_autograd(_relu_bwd_op_backward, setup_context=_relu_bwd_op_setup)


@torch.library.custom_op("rln_verified::exp_clamp_f32", mutates_args=())
def exp_clamp_op(rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
    """EXP-1 as an operator: ``exp(clamp(rho, lo, hi))`` (squared when ``square``) for float32 CPU ``rho``."""
    if library() is None:
        return exp_clamp_plain(rho, lo, hi, square)
    return exp_clamp(rho.contiguous(), lo, hi, square)[0]


@exp_clamp_op.register_fake
def _(rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
    _shape_check(rho.dtype == torch.float32, "exp_clamp_f32: float32 only")
    return torch.empty_like(rho, memory_format=torch.contiguous_format)


def _exp_op_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    rho, lo, hi, square = inputs
    ctx.bounds = (lo, hi, square)
    ctx.save_for_backward(rho, output)


def _exp_op_backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
    # d exp(c)/d rho = exp(c) (2 exp(c)^2 squared) inside [lo, hi], 0 where clamp saturates or rho is NaN (C6). The
    # saved output carries its graph, so this expression is itself differentiable to every order.
    rho, out = ctx.saved_tensors
    lo, hi, square = ctx.bounds
    inside = rho.clamp(lo, hi) == rho
    g_rho = torch.where(inside, g * out, torch.zeros_like(out))
    return (g_rho * 2.0 if square else g_rho), None, None, None


exp_clamp_op.register_autograd(_exp_op_backward, setup_context=_exp_op_setup)


# ---- the CUDA kernels: Triton, or the eager forms in plain torch -------------------------------------------------
#
# With Triton installed (the triton extra), the ReLU moments' CUDA kernels are the Triton kernels of
# ``gauss_triton`` (gauss.c's operations, RELU-6), which write and read the same float64 aux planes as the C kernel.
# Otherwise they evaluate the same forms in plain torch; ``aux`` is then a placeholder (zeros of the NAUX * n float64
# shape the schema and the fake kernel promise) that the backward receives and does not read, since it
# differentiates the forms at the saved inputs. Both take the branch ``gauss_triton.usable`` picks for ``mu``. Either
# way a float32 CUDA call takes the operator path in eager mode, under torch.compile and under autocast alike. The
# plain branch reads no data pointer and the Triton one runs under Triton's interpreter, so the tests call both on
# CPU tensors.


def _check_formula(fn: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """The checks of the C boundary that do not concern memory: float32, ``ref``'s shape and device."""
    for name, t in (("first argument", ref), *others.items()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{fn}: {name} must be torch.float32, got {t.dtype}; cast with .float() first")
        if t.device != ref.device:
            raise ValueError(f"{fn}: {name} is on {t.device}, the first argument on {ref.device}")
    _check_same_shape(fn, ref, **others)


@relu_moments_op.register_kernel("cuda")
def relu_moments_cuda(mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CUDA kernel of ``relu_moments_f32``: ``(mean, var, aux)`` from the Triton kernel where
    ``gauss_triton.usable(mu)`` (RELU-6, ``aux`` the float64 planes its backward reads), else from the eager forms
    of RELU-1/RELU-4 (float64, rounded once to float32) with ``aux`` zeros."""
    _check_formula("relu_moments_f32", mu, s=s)
    if gauss_triton.usable(mu):
        return gauss_triton.forward(mu, s)
    mean, var = relu_moments_plain(mu, s)
    return mean.contiguous(), var.contiguous(), mu.new_zeros((NAUX * mu.numel(),), dtype=torch.float64)


@relu_moments_bwd_op.register_kernel("cuda")
def relu_moments_bwd_cuda(g_mean: torch.Tensor, g_var: torch.Tensor, mu: torch.Tensor, s: torch.Tensor,
                          aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernel of ``relu_moments_bwd_f32``: the Triton kernel from the forward's ``aux`` where
    ``gauss_triton.usable(mu)`` (the branch :func:`relu_moments_cuda` took; RELU-5's closed form, RELU-6), else the
    VJP of the eager forms at ``(mu, s)`` (RELU-5 by autograd), for which ``aux`` is checked and not read."""
    _check_formula("relu_moments_bwd_f32", mu, s=s, g_mean=g_mean, g_var=g_var)
    if aux.dtype != torch.float64 or aux.numel() != NAUX * mu.numel():
        raise ValueError(f"relu_moments_bwd_f32: aux must be {NAUX * mu.numel()} float64 values, got "
                         f"{aux.numel()} {aux.dtype}")
    if aux.device != mu.device:
        raise ValueError(f"relu_moments_bwd_f32: aux is on {aux.device}, mu on {mu.device}")
    if gauss_triton.usable(mu):
        return gauss_triton.backward(g_mean, g_var, mu, s, aux)
    return recompute_plain_relu_vjp(g_mean, g_var, mu, s)


@exp_clamp_op.register_kernel("cuda")
def exp_clamp_cuda(rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
    """The CUDA kernel of ``exp_clamp_f32``: torch's ``exp(clamp(rho, lo, hi))`` (squared when ``square``); its
    gradient is the operator's autograd formula, as on the CPU."""
    _check_formula("exp_clamp_f32", rho)
    return exp_clamp_plain(rho, lo, hi, square).contiguous()


class _ReluMomentsF32(torch.autograd.Function):
    """RELU-6: the moments of relu(N(mu, sigma^2)) for float32 ``mu`` and ``sigma`` of one shape. Saves mu, sigma and
    three float64 planes (mean, phi(|a|), Q(|a|)), so the backward evaluates no transcendental function."""

    @staticmethod
    def forward(ctx: Any, mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var, aux = forward_raw(mu.contiguous(), s.contiguous())
        ctx.save_for_backward(mu, s, aux)
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None) -> tuple[Any, ...]:
        mu, s, aux = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: the plain formula's VJP, differentiable to every order
            return recompute_vjp(relu_moments_plain, (mu, s), need, (g_mean, g_var))
        g_mu, g_s = backward_raw(g_mean, g_var, mu.contiguous(), s.contiguous(), None, aux)
        return (g_mu if need[0] else None), (g_s if need[1] else None)


def relu_moments_f32(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments through the kernel, with autograd; ``mu`` and ``sigma`` float32 CPU tensors of one shape (call
    where :func:`usable` holds)."""
    out = _ReluMomentsF32.apply(mu, sigma)  # type: ignore[no-untyped-call]
    return out[0], out[1]


__all__ = ["NAUX", "available", "backward_raw", "disabled", "exp_clamp", "exp_clamp_cuda", "exp_clamp_op",
           "exp_clamp_plain", "exp_max_ulp", "forward_raw", "kl_backward_raw", "kl_forward_raw", "library", "reason",
           "relu_moments_bwd_cuda", "relu_moments_bwd_op", "relu_moments_cuda", "relu_moments_f32",
           "relu_moments_op", "relu_moments_plain", "usable"]
