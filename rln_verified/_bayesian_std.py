"""The posterior std of the Bayesian linear layers: its bounds, its clamped exp and the safe square root.

``sigma = exp(clamp(rho, log lo, log hi))`` with ``[lo, hi] = std_bounds(dtype)`` (C6 in ``proofs/bayesian_linear.md``)
and ``sqrt(clamp_min(v, tiny))``, each as a plain torch form (``std_plain``, ``safe_sqrt_plain``) and as an autograd
node with a hand-written backward (``ExpStd``, ``_SafeSqrt``); float32 on CPU the exp runs the fused kernel of
``_native/gauss.py`` (EXP-1). Every hand-written backward, asked for a graph (``create_graph=True``), returns the VJP
of the plain form instead (``_dispatch.recompute_vjp``), so second and higher derivatives are right.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from rln_verified._dispatch import onnx_exporting, recompute_vjp, recording, under_func_transform
from rln_verified._native import gauss
from rln_verified._special import inv_softplus, softplus

#: Initial posterior std of every weight and bias (ObjectRL's choice, rho = -4.6 there).
INIT_STD = 0.01


def std_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """The range ``[tiny**(1/4), max**(1/8)]`` the posterior std is kept in (C6).

    Below: ``sigma**2 >= sqrt(tiny)``, so the variance and its products with inputs of size >= tiny**(1/4)
    stay normal. Above: ``sigma**2 <= max**(1/4)``, so ``x**2 sigma**2`` summed over a layer stays finite
    for ``|x| <= max**(1/4) / sqrt(fan_in)``, and the KL's ``t = (sigma/s)**2 - 1`` keeps ``t**2`` finite
    for every prior std ``s >= max**(-1/8)``. float32: ``[3.3e-10, 6.5e4]``; float64: ``[1.2e-77, 3.4e38]``.
    float16 and bfloat16 use the float32 range (their std is computed in float32 and cast back). bfloat16 holds all
    of it; float16 does not (its largest float is 65504, its smallest subnormal 6e-8), so a float16 std saturates
    there: 0 for rho below about -16.6, inf above about 11.1 (C6's finite, positive std is a float32, float64 and
    bfloat16 statement).
    """
    fi = torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    return float(fi.tiny) ** 0.25, float(fi.max) ** 0.125


#: Below this many elements the plain autograd forms cost less than a custom Function's call overhead.
FUSE_MIN = 4096


def safe_sqrt(var: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (C6).

    ``clamp_min(tiny)`` moves only inputs below the smallest normal ``tiny``, by at most
    ``sqrt(tiny)`` in the result (1.1e-19 in float32, 1.5e-154 in float64), far below any std the
    layers produce. Below ``tiny`` the gradient is 0, the true derivative of the std of a variance
    that is identically 0 (at a zero input, d sqrt(sum x_j^2 s_j^2)/d rho = 0); at ``tiny`` it is
    ``1/(2 sqrt(tiny))``, finite.
    """
    if eager_nodes_ok(var) and var.numel() >= FUSE_MIN:  # no size test while export records: it would guard the batch
        out: torch.Tensor = _SafeSqrt.apply(var)  # type: ignore[no-untyped-call]
        return out
    return torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))


def safe_sqrt_plain(var: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny)),)


def std_plain(rho: torch.Tensor | None, lo: float, hi: float, square: bool) -> torch.Tensor | None:
    return None if rho is None else gauss.exp_clamp_plain(rho, lo, hi, square)


def eager_nodes_ok(*tensors: torch.Tensor | None) -> bool:
    """Nothing records the call (compile, export, jit.trace), no torch.func transform is active and the first tensor
    is not float32 CUDA: the custom autograd Functions (here and in ``_bayesian_ops``) may be used. float32 CUDA takes
    the path compile takes (plain forms with the kernels as operators, whose CUDA kernels are Triton's or eager
    torch), in eager mode too."""
    if recording() or under_func_transform(*tensors):
        return False
    t0 = tensors[0]
    return t0 is None or not t0.is_cuda or t0.dtype != torch.float32  # float32 CUDA: the operator path, as compile


def no_autocast_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A custom backward runs in the dtype its forward ran in: a ``.backward()`` called inside an autocast block
    would otherwise recast its matmuls to the autocast dtype (one cheap check when autocast is off)."""
    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        g = next((t for t in grads if t is not None), None)
        dev = g.device.type if g is not None else "cpu"
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(ctx, *grads)
        return fn(ctx, *grads)

    return wrapper


def _inside(t: torch.Tensor, lo: float, hi: float) -> bool:
    """True when ``t`` is on the CPU and every element lies in ``[lo, hi]`` (no NaN), so a clamp to that range is the
    identity: one read-only pass (on CPU the answer costs no device synchronisation)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return False
    if hi == math.inf:
        return lo <= float(torch.amin(t))  # False for a NaN
    t_lo, t_hi = torch.aminmax(t)
    return lo <= float(t_lo) and float(t_hi) <= hi


def squared_std(rho: torch.Tensor, lo: float, hi: float, square: bool = True,
                 w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``exp(clamp(rho, lo, hi))`` (squared when ``square``), bit for bit ``_std_of(rho)`` (``.square()``); the mask
    of the saturated or NaN elements, whose gradient is 0 as clamp's (C6), None when there is none; and ``w * w``
    when ``w`` is given (None otherwise).

    float32 on CPU: one pass of the fused kernel, whose exp (EXP-1) is then the std's exp everywhere (std(), var(),
    KL() and the layers' forward). Elsewhere torch's; on CPU a min/max pass first, so that the clamp, an identity
    where nothing is saturated, and its mask are skipped.
    """
    if gauss.usable(rho) and (w is None or (gauss.usable(w) and w.shape == rho.shape)):
        out, sat, w2 = gauss.exp_clamp(rho.contiguous(), lo, hi, square,
                                               w.contiguous() if w is not None else None)
        return out, (rho.clamp(lo, hi) != rho if sat else None), w2
    w2 = w * w if w is not None else None
    if _inside(rho, lo, hi):
        sd, mask = torch.exp(rho), None
    else:
        c = rho.clamp(lo, hi)
        mask = c != rho
        sd = c.exp_()
    return (sd.mul_(sd) if square else sd), mask, w2


class ExpStd(torch.autograd.Function):
    """``sigma = exp(clamp(rho, lo, hi))`` or (``square``) ``sigma**2``, the values of the autograd form, with its
    gradient ``sigma`` (``2 sigma**2``) where ``lo <= rho <= hi`` and 0 elsewhere (C6): one pass forward and one
    backward where nothing is saturated, against clamp's two and four."""

    @staticmethod
    def forward(ctx: Any, rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
        out, mask, _ = squared_std(rho, lo, hi, square)
        ctx.save_for_backward(out, mask, rho)
        ctx.square = square
        ctx.bounds = (lo, hi)
        return out

    @staticmethod
    @no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        out, mask, rho = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            lo, hi = ctx.bounds
            sq = ctx.square
            g_r = recompute_vjp(lambda r: (gauss.exp_clamp_plain(r, lo, hi, sq),), (rho,),
                                ctx.needs_input_grad[:1], (g,))[0]
            return g_r, None, None, None
        g_rho = g * out
        if ctx.square:
            g_rho = g_rho * 2.0
        if mask is not None:
            g_rho = g_rho.masked_fill(mask, 0.0)
        return g_rho, None, None, None


def posterior_std(rho: torch.Tensor, use_softplus: bool, square: bool = False) -> torch.Tensor:
    """The posterior std ``exp(rho)`` or ``softplus(rho)`` kept in :func:`std_bounds` (C6), squared when ``square``.

    The exp: one node (``ExpStd``) where it may run, whose exp float32 on CPU is the fused kernel's (EXP-1);
    under compile, export or trace, and float32 CUDA in eager mode, the kernel as an operator; elsewhere torch's.
    """
    lo, hi = std_bounds(rho.dtype)
    if use_softplus:
        # float16: the bounds are float32's (std_bounds) and hi overflows float16, so clamp and compute in float32
        # and cast back, as the docstring of std_bounds says
        rf = rho.float() if rho.dtype == torch.float16 else rho
        r = rf.clamp(float(inv_softplus(torch.tensor(lo, dtype=torch.float64))), hi)
        sd = softplus(r)
        sd = sd.square() if square else sd
        return sd.to(rho.dtype)
    if recording():
        if not onnx_exporting() and rho.dtype == torch.float32 and (rho.is_cpu or rho.is_cuda):
            op_out: torch.Tensor = gauss.exp_clamp_op(rho, math.log(lo), math.log(hi), square)
            return op_out
    elif rho.is_cuda and rho.dtype == torch.float32 and not under_func_transform(rho):
        # float32 CUDA, eager: the operator, as under compile (its CUDA kernel is torch's exp)
        cuda_out: torch.Tensor = gauss.exp_clamp_op(rho, math.log(lo), math.log(hi), square)
        return cuda_out
    if eager_nodes_ok(rho) and (rho.numel() >= FUSE_MIN or gauss.usable(rho)):
        out: torch.Tensor = ExpStd.apply(rho, math.log(lo), math.log(hi), square)  # type: ignore[no-untyped-call]
        return out
    sd = torch.exp(rho.clamp(math.log(lo), math.log(hi)))
    return sd.square() if square else sd


def sqrt_and_mask(var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The values of :func:`safe_sqrt` and the mask of clamped elements (None when nothing is below tiny, so the
    clamp pass is skipped)."""
    tiny = torch.finfo(var.dtype).tiny
    if _inside(var, tiny, math.inf):
        return torch.sqrt(var), None
    low = torch.ge(var, tiny).logical_not_()  # clamp_min's mask: NaN counts as below
    return torch.sqrt(var.clamp_min(tiny)), low


class _SafeSqrt(torch.autograd.Function):
    """:func:`safe_sqrt` with the same values and gradients, skipping the clamp where no element is below tiny."""

    @staticmethod
    def forward(ctx: Any, var: torch.Tensor) -> torch.Tensor:
        s, low = sqrt_and_mask(var)
        ctx.save_for_backward(s, low, var)
        return s

    @staticmethod
    @no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor | None:
        s, low, var = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            return recompute_vjp(safe_sqrt_plain, (var,), ctx.needs_input_grad, (g,))[0]
        g_v: torch.Tensor = g / (2 * s)  # SqrtBackward's expression
        return g_v if low is None else g_v.masked_fill(low, 0.0)


__all__ = ["FUSE_MIN", "INIT_STD", "ExpStd", "eager_nodes_ok", "no_autocast_backward",
           "posterior_std", "safe_sqrt", "safe_sqrt_plain", "sqrt_and_mask", "squared_std", "std_bounds", "std_plain"]
