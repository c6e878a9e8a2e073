"""The fused float32 CPU kernel of the R-LayerNorm layers (``_native/rnorm.c``), built on first use
(``_native_build.py``). When it is unavailable, or switched off, the layers use the eager kernel in ``_rnorm.py``,
which computes the same formula (proofs/norm.md, N11).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch

from rln_verified._native_build import Kernel, plain_f32
from rln_verified._native_build import ptr as _p

_NSTAT = 4  # per-group float64 values saved for backward (rnorm.c, NSTAT)

_i64, _int, _dbl, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p


def _setup(lib: ctypes.CDLL) -> None:
    if lib.rln_stats_per_group() != _NSTAT:
        raise RuntimeError("native kernel saves another number of values per group")
    lib.rln_forward_f32.argtypes = [_ptr, _i64, _i64, _i64, _int, _int, _dbl, _dbl, _dbl, _int, _ptr, _ptr, _i64,
                                    _ptr, _ptr, _ptr, _int]
    lib.rln_backward_f32.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _i64, _int, _int, _dbl, _dbl, _dbl, _dbl, _int,
                                     _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _int]
    for fn in (lib.rln_forward_f32, lib.rln_backward_f32):
        fn.restype = _int


_KERNEL = Kernel("rnorm.c", "rln_abi_version", 5, _setup)
library = _KERNEL.library
available = _KERNEL.available
disabled = _KERNEL.disabled
reason = _KERNEL.reason


def usable(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lam: torch.Tensor,
           mode: int, p: int, l_: int) -> bool:
    """True when the fused kernel applies to ``x`` viewed as contiguous (p, l_) planes: float32 CPU tensors, not
    under torch.func or torch.compile, with an affine of the given mode (0 none; 1 per channel of an (N, C, H, W)
    input; 2 one value per plane element)."""
    if x.dtype != torch.float32 or p < 1 or l_ < 2 or lam.numel() != 1 or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or not plain_f32(x, weight, bias, lam):
        return False
    if weight is None:
        if bias is not None or mode != 0:
            return False
    else:
        if bias is not None and bias.numel() != weight.numel():
            return False
        if mode == 1 and (x.ndim != 4 or weight.numel() != x.shape[1]):
            return False
        if mode == 2 and weight.numel() != p * l_:
            return False
        if mode not in (1, 2):
            return False
    return available()


Config = tuple[float | None, float, float, float, bool, bool, int, int, int, tuple[int, ...]]
"""(lo, hi, eps, alpha, bayes, two_d, mode, p, l_, u_shape): everything but the tensors, as one argument so the
autograd call has few inputs to inspect."""


def _forward(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, lam_src: torch.Tensor,
             cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """y, u, the per-group stats, lambda and d lambda / d lam_src."""
    lib = library()
    assert lib is not None
    lo, hi, eps, alpha, bayes, two_d, mode, p, l_, u_shape = cfg
    groups = x.numel() // (p * l_)
    src = float(lam_src)
    if lo is None:
        lam, dlam = src, 1.0
    else:
        lam, dlam = lo + (hi - lo) * 0.5 * (1.0 + math.sin(src)), (hi - lo) * 0.5 * math.cos(src)
    y = torch.empty_like(x)
    u = torch.empty(u_shape, dtype=x.dtype)
    stats = torch.empty(groups, _NSTAT, dtype=torch.float64)
    rc = lib.rln_forward_f32(x.data_ptr(), groups, p, l_, two_d, bayes, eps, lam, alpha, mode, _p(w), _p(b),
                             x.shape[1] if mode == 1 else 1, y.data_ptr(), u.data_ptr(), stats.data_ptr(),
                             torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({p}, {l_})")
    return y, u, stats, lam, dlam


class _NativeFn(torch.autograd.Function):
    """The fused kernel as an autograd Function. Saves x, the weight, lambda's source and per group
    (mean, 1/sigma, r, a) in float64: no tensor the size of the input besides the input itself.

    ``lam_src`` is lambda itself (``lo`` is None) or the raw parameter of N8, lambda = lo + (hi - lo)(1 + sin raw)/2.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                lam_src: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
        y, u, stats, lam, dlam = _forward(x, weight, bias, lam_src, cfg)
        ctx.save_for_backward(x, weight, lam_src, stats)
        ctx.cfg = cfg
        ctx.lam = (lam, dlam)
        if not cfg[4]:
            ctx.mark_non_differentiable(u)
        ctx.set_materialize_grads(False)  # an unused u gets no zero-filled cotangent
        return y, u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor | None, gu: torch.Tensor | None) -> tuple[Any, ...]:
        lib = library()
        assert lib is not None
        x, w, lam_src, stats = ctx.saved_tensors
        _, _, eps, alpha, bayes, two_d, mode, p, l_, _ = ctx.cfg
        lam, dlam = ctx.lam
        groups = x.numel() // (p * l_)
        gy_c = torch.zeros_like(x) if gy is None else gy.to(torch.float32).contiguous()
        gu_c = gu.to(torch.float32).contiguous() if (gu is not None and bayes) else None
        need = ctx.needs_input_grad
        gx = torch.empty_like(x)
        g_l = torch.empty_like(lam_src)
        g_w = torch.empty_like(w) if (w is not None and need[1]) else None
        g_b = torch.empty_like(w) if (w is not None and need[2]) else None
        rc = lib.rln_backward_f32(x.data_ptr(), gy_c.data_ptr(), _p(gu_c), groups, p, l_, two_d, bayes, eps, lam,
                                  dlam, alpha, mode, _p(w), x.shape[1] if mode == 1 else 1, stats.data_ptr(),
                                  gx.data_ptr(), g_l.data_ptr(), _p(g_w), _p(g_b), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({p}, {l_})")
        return gx, g_w, g_b, (g_l if need[3] else None), None


def apply(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lam_src: torch.Tensor,
          lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int, l_: int,
          u_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """y (shaped like x) and u (``u_shape``) with x viewed as (p, l_) planes; see :class:`_NativeFn`.
    Call only where :func:`usable` holds."""
    x = x.contiguous()  # a copy, where one is made, is recorded by autograd like any other op
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    cfg: Config = (lo, hi, eps, alpha, bayes, two_d, mode, p, l_, u_shape)
    if torch.is_grad_enabled() and (x.requires_grad or lam_src.requires_grad
                                    or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)):
        out = _NativeFn.apply(x, weight, bias, lam_src, cfg)  # type: ignore[no-untyped-call]
        return out[0], out[1]
    y, u, _, _, _ = _forward(x, weight, bias, lam_src, cfg)  # no graph to record: no autograd node
    return y, u


__all__ = ["apply", "available", "disabled", "library", "reason", "usable"]
