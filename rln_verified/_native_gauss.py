"""The fused float32 CPU kernels of ``_native/gauss.c``, built on first use: the ReLU moments of a Gaussian and
their backward (RELU-6), and the exp of the Bayesian layers' posterior std (EXP-1).

Built and loaded like the R-LayerNorm kernel (``_native_build.py``). When no compiler is
found, the build fails, or ``RLN_VERIFIED_NATIVE=0`` is set, :func:`available` is False:
:func:`rln_verified.functional.relu_moments` then uses its eager float64 kernel, which evaluates the same forms, and
the layers' std uses ``torch.exp``. :func:`disabled` routes calls to those eager paths inside a block.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from rln_verified._native_build import Kernel, plain_f32
from rln_verified._native_build import ptr as _p

#: float64 planes kept per element for the backward: the mean, phi(|a|) and Q(|a|) (gauss.c, fwd_block).
NAUX = 3

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


def _setup(lib: ctypes.CDLL) -> None:
    lib.rln_relu_moments_fwd_f32.argtypes = [_ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr]
    lib.rln_relu_moments_bwd_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr]
    lib.rln_exp_clamp_f32.argtypes = [_ptr, _i64, ctypes.c_float, ctypes.c_float, _int, _ptr, _ptr, _ptr]
    lib.rln_exp_f32_max_ulp.argtypes = [ctypes.c_float, ctypes.c_float, _i64, _ptr]
    lib.rln_exp_f32_max_ulp.restype = ctypes.c_double
    for fn in (lib.rln_relu_moments_fwd_f32, lib.rln_relu_moments_bwd_f32, lib.rln_exp_clamp_f32):
        fn.restype = _int


_KERNEL = Kernel("gauss.c", "rln_gauss_abi_version", 3, _setup)
library = _KERNEL.library
available = _KERNEL.available
disabled = _KERNEL.disabled
reason = _KERNEL.reason


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernel applies: float32 CPU tensors, not wrapped by torch.func, not under torch.compile."""
    return not torch.compiler.is_compiling() and plain_f32(*tensors) and available()


def forward_raw(mu: torch.Tensor, s: torch.Tensor,
                v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, var, aux)`` of relu(N(mu, sigma^2)) for contiguous float32 CPU tensors of one shape (no autograd);
    ``aux`` holds the float64 planes the backward reads. ``s`` is sigma, or, with a variance ``v``, torch's
    ``sqrt(v)``: sigma is then ``sqrt(clamp_min(v, 2^-126))`` bit for bit (the CLT layers' ``_safe_sqrt``)."""
    lib = library()
    assert lib is not None
    n = mu.numel()
    mean, var = torch.empty_like(mu), torch.empty_like(mu)
    aux = torch.empty(NAUX * n, dtype=torch.float64)
    rc = lib.rln_relu_moments_fwd_f32(mu.data_ptr(), s.data_ptr(), _p(v), n, mean.data_ptr(), var.data_ptr(),
                                      aux.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native relu_moments kernel failed (code {rc}) on {n} elements")
    return mean, var, aux


def backward_raw(g_mean: torch.Tensor | None, g_var: torch.Tensor | None, mu: torch.Tensor, s: torch.Tensor,
                 v: torch.Tensor | None, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dmu, dL/ds)`` (``dL/dv`` with a variance ``v``, 0 where ``v < 2^-126``) from ``dL/dmean``, ``dL/dvar``
    (None: zero) and the forward's ``aux`` (no autograd)."""
    lib = library()
    assert lib is not None
    gm = torch.zeros_like(mu) if g_mean is None else g_mean.to(torch.float32).contiguous()
    gv = torch.zeros_like(mu) if g_var is None else g_var.to(torch.float32).contiguous()
    g_mu, g_s = torch.empty_like(mu), torch.empty_like(mu)
    rc = lib.rln_relu_moments_bwd_f32(gm.data_ptr(), gv.data_ptr(), mu.data_ptr(), s.data_ptr(), _p(v), aux.data_ptr(),
                                      mu.numel(), g_mu.data_ptr(), g_s.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native relu_moments kernel failed (code {rc}) on {mu.numel()} elements")
    return g_mu, g_s


def exp_clamp(rho: torch.Tensor, lo: float, hi: float, square: bool,
              w: torch.Tensor | None = None) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
    """``(exp(clamp(rho, lo, hi)) [squared], saturated, w * w)`` for a contiguous float32 CPU ``rho`` (no autograd),
    the exp of EXP-1 (within 1 ulp, exhaustively checked); ``saturated``: some element was clamped or NaN. ``lo``
    and ``hi`` are rounded to float32, as ``torch.clamp`` rounds them for a float32 tensor. ``w`` (optional, of
    ``rho``'s shape): its square is formed in the same pass."""
    lib = library()
    assert lib is not None
    out = torch.empty_like(rho)
    w2 = torch.empty_like(w) if w is not None else None
    sat = lib.rln_exp_clamp_f32(rho.data_ptr(), rho.numel(), lo, hi, int(square), out.data_ptr(), _p(w), _p(w2))
    return out, bool(sat), w2


def exp_max_ulp(lo: float, hi: float, stride: int = 1) -> tuple[float, float]:
    """EXP-1's check: ``(worst error in ulps, where)`` of the kernel's exp over every ``stride``-th float32 from ``lo``
    to ``hi`` (``hi`` included; ``stride=1``: every one, about 40 s for the std's range) against the C library's
    float64 exp."""
    lib = library()
    assert lib is not None
    where = ctypes.c_float(0.0)
    worst = float(lib.rln_exp_f32_max_ulp(lo, hi, stride, ctypes.byref(where)))
    return worst, float(where.value)


class _ReluMomentsF32(torch.autograd.Function):
    """RELU-6: the moments of relu(N(mu, sigma^2)) for float32 ``mu`` and ``sigma`` of one shape. Saves mu, sigma and
    three float64 planes (mean, phi(|a|), Q(|a|)), so the backward evaluates no transcendental function."""

    @staticmethod
    def forward(ctx: Any, mu: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu_c, s_c = mu.contiguous(), s.contiguous()
        mean, var, aux = forward_raw(mu_c, s_c)
        ctx.save_for_backward(mu_c, s_c, aux)
        return mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None) -> tuple[Any, ...]:
        mu, s, aux = ctx.saved_tensors
        g_mu, g_s = backward_raw(g_mean, g_var, mu, s, None, aux)
        need = ctx.needs_input_grad
        return (g_mu if need[0] else None), (g_s if need[1] else None)


def relu_moments_f32(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments through the kernel, with autograd; ``mu`` and ``sigma`` float32 CPU tensors of one shape (call
    where :func:`usable` holds)."""
    out = _ReluMomentsF32.apply(mu, sigma)  # type: ignore[no-untyped-call]
    return out[0], out[1]


__all__ = ["NAUX", "available", "backward_raw", "disabled", "exp_clamp", "exp_max_ulp", "forward_raw", "library",
           "reason", "relu_moments_f32", "usable"]
