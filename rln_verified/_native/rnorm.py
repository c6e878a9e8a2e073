"""The fused float32 CPU kernel of the R-LayerNorm layers (``_native/rnorm.c``), built on first use
(``_native/toolchain.py``), as a Python autograd node for plain eager calls and as the torch operators
``rln_verified::rnorm_forward`` / ``rln_verified::rnorm_backward`` for everything that records or transforms a call
(``torch.compile``, ``torch.export``, ``torch.jit.trace``, fake and meta tensors). Both call the same C functions
with the same arguments (N11). When the kernel is unavailable, or switched off, the layers use the eager kernel in
``_norm.py``, which computes the same formula.

Every argument is checked in Python before a pointer reaches C (:func:`_check_forward`, :func:`_check_backward`).
A backward asked to build a graph (``create_graph=True``) differentiates the plain formula of
``_norm_formula.plain_planes`` instead, so second derivatives are exact to rounding.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rln_verified._dispatch import fused_eager_ok, recompute_vjp
from rln_verified._native import rnorm_triton
from rln_verified._native.toolchain import Kernel
from rln_verified._native.toolchain import ptr as _p
from rln_verified._norm_formula import lambda_of, plain_planes

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
    lib.rln_vector_paths.argtypes = []
    lib.rln_vector_paths.restype = _int
    lib.rln_vector_psi_expm1.argtypes = [_ptr, _ptr, _i64, _ptr, _ptr]
    lib.rln_vector_psi_expm1.restype = _int
    lib.rln_scalar_psi.argtypes = [_ptr, _i64, _ptr]
    lib.rln_scalar_psi.restype = None


KERNEL = Kernel("rnorm.c", "rln_abi_version", 6, _setup)
library, available, disabled, reason = KERNEL.library, KERNEL.available, KERNEL.disabled, KERNEL.reason


class PlaneConfig(NamedTuple):
    """Everything about one call but the tensors.

    ``lo`` None: the lambda tensor is lambda itself; else it is the raw parameter of N8,
    lambda = lo + (hi - lo)(1 + sin raw)/2. ``mode``: 0 no affine; 1 one weight per channel of an (N, C, H, W)
    input; 2 one weight per plane element. ``p``, ``l``: the (P, L) plane every group is viewed as.
    """

    lo: float | None
    hi: float
    eps: float
    alpha: float
    bayes: bool
    two_d: bool
    mode: int
    p: int
    l: int  # noqa: E741


def vector_paths() -> bool:
    """True when the loaded kernel has its 8-lane vector paths (an AVX-512 build: planes of width 8 and rows of a
    multiple of 8 take them); False when every width takes the flat loops or the kernel is not loaded."""
    lib = library()
    return lib is not None and bool(lib.rln_vector_paths())


def vector_psi_expm1(t: Tensor, z: Tensor) -> tuple[Tensor, Tensor] | None:
    """The kernel's 8-lane ``psi(t)`` and ``expm1(z)`` (the Bayesian forward's per-group scalars, N11), for checks
    against mpmath: ``t`` finite and ``>= 0``, ``z <= 0`` or NaN (a NaN must come back NaN), both float64 of one
    size. None where the kernel is not loaded or has no vector paths."""
    lib = library()
    if lib is None:
        return None
    if t.dtype != torch.float64 or z.dtype != torch.float64 or t.numel() != z.numel():
        raise TypeError("vector_psi_expm1: t and z must be float64 tensors of one size")
    if t.numel() and not (bool(torch.isfinite(t).all()) and bool((t >= 0).all()) and not bool((z > 0).any())):
        raise ValueError("vector_psi_expm1: t must be finite and >= 0, z <= 0 or NaN")
    tc, zc = t.detach().cpu().contiguous(), z.detach().cpu().contiguous()
    ps, em = torch.empty_like(tc), torch.empty_like(zc)
    if lib.rln_vector_psi_expm1(tc.data_ptr(), zc.data_ptr(), tc.numel(), ps.data_ptr(), em.data_ptr()) != 0:
        return None
    return ps, em


def scalar_psi(t: Tensor) -> Tensor | None:
    """The kernel's scalar ``psi(t)`` (builds without the vector paths, and the special lanes of the vector routine),
    for checks against mpmath: ``t`` float64. None where the kernel is not loaded."""
    lib = library()
    if lib is None:
        return None
    if t.dtype != torch.float64:
        raise TypeError(f"scalar_psi: t must be float64, got {t.dtype}")
    tc = t.detach().cpu().contiguous()
    out = torch.empty_like(tc)
    lib.rln_scalar_psi(tc.data_ptr(), tc.numel(), out.data_ptr())
    return out


def _kernel_ready() -> bool:
    return available()


# torch.compile reads the answer once per compiled graph instead of tracing the build machinery.
_kernel_ready_const = torch.compiler.assume_constant_result(_kernel_ready)  # type: ignore[no-untyped-call]


def _affine_ok(x: Tensor, weight: Tensor | None, bias: Tensor | None, mode: int, p: int, l_: int) -> bool:
    """The affine tensors fit the mode (see :class:`PlaneConfig`) and the (p, l_) planes of ``x``."""
    if weight is None:
        return bias is None and mode == 0
    if bias is not None and bias.numel() != weight.numel():
        return False
    if mode == 1:
        return x.ndim == 4 and weight.numel() == x.shape[1]
    return mode == 2 and weight.numel() == p * l_


def usable(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam: Tensor, mode: int, p: int, l_: int) -> bool:
    """True when the operator applies to ``x`` viewed as contiguous (p, l_) planes: float32 tensors all on the CPU
    (or meta; the fused kernel must be built) or all on CUDA (the operator's CUDA kernel, :func:`cuda_forward`), with
    an affine of the given mode (see :class:`PlaneConfig`). The caller has ruled out torch.func transforms."""
    if x.dtype != torch.float32 or p < 1 or l_ < 2 or lam.numel() != 1 or x.numel() == 0:
        return False
    # all on the CPU, or all meta (the fake kernel); a mix (a meta lambda with a CPU input) goes to the eager path,
    # whose device checks raise
    cpu, meta = x.is_cpu, x.is_meta
    cpu_like = cpu or meta
    if cpu_like:
        for t in (weight, bias, lam):
            if t is not None and (t.dtype != torch.float32 or t.is_cpu != cpu or t.is_meta != meta):
                cpu_like = False
                break
    if not cpu_like and not _all_cuda_f32(x, weight, bias, lam):
        return False
    if not _affine_ok(x, weight, bias, mode, p, l_):
        return False
    if not cpu_like:  # CUDA: the operator's CUDA kernel is plain torch, always there
        return True
    if torch.compiler.is_compiling():
        return bool(_kernel_ready_const())
    return available()


def eager_usable(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam: Tensor, mode: int, p: int,
                 l_: int) -> bool:
    """:func:`usable` for a caller that has checked ``_dispatch.eager_f32`` (plain float32 CPU tensors, nothing
    recording or transforming the call): the sizes, the affine mode and the kernel."""
    return (p >= 1 and l_ >= 2 and lam.numel() == 1 and x.numel() > 0 and _affine_ok(x, weight, bias, mode, p, l_)
            and available())


def _all_cuda_f32(*tensors: Tensor | None) -> bool:
    """Every tensor given is a float32 CUDA tensor (the operator's CUDA kernel applies); None counts."""
    for t in tensors:  # noqa: SIM110
        if t is not None and (t.dtype != torch.float32 or not t.is_cuda):
            return False
    return True


# ---- the C boundary: nothing crosses unchecked ----------------------------------------------------------


def _require(t: Tensor, name: str, dtype: torch.dtype, numel: int) -> None:
    if isinstance(t, Tensor) and t.dtype == dtype and t.is_cpu and t.is_contiguous() and t.numel() == numel:
        return  # the common case in one test; the messages below say what is wrong otherwise
    if not isinstance(t, Tensor):
        raise TypeError(f"rnorm kernel: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"rnorm kernel: {name} must be {dtype}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"rnorm kernel: {name} must be on the CPU, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"rnorm kernel: {name} must be contiguous")
    if t.numel() != numel:
        raise ValueError(f"rnorm kernel: {name} must have {numel} elements, got {t.numel()} (shape {tuple(t.shape)})")


def _planes(x: Tensor, two_d: bool, p: int, l_: int) -> tuple[int, int]:
    """The (P, L) planes of an operator call. In the 2d layout they are x's last two dims, whatever ``p`` and ``l_``
    say: a ``torch.jit.trace`` records the sizes of the traced input as constants, and a trace run on an (H, W) of
    the same H W but another shape must still see its own planes (not a (p, l_) view of them)."""
    if two_d and x.ndim >= 2:
        return x.shape[-2], x.shape[-1]  # symbolic under export and dynamic compile: no int(), which would specialize
    return p, l_


def _groups(x: Tensor, cfg: PlaneConfig) -> int:
    m = cfg.p * cfg.l
    if cfg.p < 1 or cfg.l < 2 or x.numel() == 0 or x.numel() % m != 0:
        raise ValueError(f"rnorm kernel: input of shape {tuple(x.shape)} is not a stack of ({cfg.p}, {cfg.l}) planes "
                         "with L >= 2")
    return x.numel() // m


def _channels(x: Tensor, cfg: PlaneConfig) -> int:
    if cfg.mode == 1:
        if x.ndim != 4 or x.shape[-2] * x.shape[-1] != cfg.p * cfg.l:
            raise ValueError(f"rnorm kernel: a per-channel weight needs an (N, C, H, W) input, got {tuple(x.shape)}")
        return int(x.shape[1])
    return 1


def _affine_numel(x: Tensor, cfg: PlaneConfig) -> int:
    if cfg.mode == 1:
        return _channels(x, cfg)
    if cfg.mode == 2:
        return cfg.p * cfg.l
    raise ValueError(f"rnorm kernel: mode {cfg.mode} takes no affine")


def _check_numbers(cfg: PlaneConfig) -> None:
    """The configuration's numbers, with the layers' rules (``check_config``): 0 < eps < inf, 0 <= alpha < inf and,
    for a raw lambda, 0 <= lo < hi < inf. The operators are public, and the kernel's scalar and 8-lane routines are
    defined on these ranges only (a NaN alpha once gave u = 1 in the 8-lane routine)."""
    eps, alpha = cfg.eps, cfg.alpha
    if not (0.0 < eps < math.inf and 0.0 <= alpha < math.inf):
        raise ValueError(f"rnorm kernel: eps must be positive and finite and alpha >= 0 and finite, got eps={eps!r}, "
                         f"alpha={alpha!r}")
    if cfg.lo is not None and not (0.0 <= cfg.lo < cfg.hi < math.inf):
        raise ValueError(f"rnorm kernel: lambda bounds must satisfy 0 <= lo < hi < inf, got [{cfg.lo!r}, {cfg.hi!r}]")


def _check_forward(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor,
                   cfg: PlaneConfig) -> tuple[int, int]:
    """(groups, channels), after checking every tensor that reaches ``rln_forward_f32``."""
    if cfg.mode not in (0, 1, 2):
        raise ValueError(f"rnorm kernel: mode must be 0, 1 or 2, got {cfg.mode}")
    _check_numbers(cfg)
    groups = _groups(x, cfg)
    _require(x, "x", torch.float32, x.numel())
    _require(lam_src, "lambda", torch.float32, 1)
    if w is None:
        if b is not None or cfg.mode != 0:
            raise ValueError("rnorm kernel: a bias or an affine mode needs a weight")
        return groups, 1
    channels = _channels(x, cfg)
    n = channels if cfg.mode == 1 else _affine_numel(x, cfg)
    _require(w, "weight", torch.float32, n)
    if b is not None:
        _require(b, "bias", torch.float32, n)
    return groups, channels


def _check_backward(x: Tensor, w: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
                    cfg: PlaneConfig) -> tuple[int, int]:
    groups, channels = _check_forward(x, w, None, lam_src, cfg)
    _require(stats, "stats", torch.float64, groups * _NSTAT)
    _require(gy, "grad of y", torch.float32, x.numel())
    if gu is not None:
        _require(gu, "grad of u", torch.float32, groups)
    return groups, channels


def _lambda(lam_src: Tensor, cfg: PlaneConfig) -> tuple[float, float]:
    """lambda and d lambda / d lam_src (N8) as Python floats."""
    src = float(lam_src)
    if cfg.lo is None:
        return src, 1.0
    if not math.isfinite(src):  # a diverged optimizer: NaN, as the eager path's torch.sin gives (math.sin raises)
        return math.nan, math.nan
    lo, hi = cfg.lo, cfg.hi
    return lo + (hi - lo) * 0.5 * (1.0 + math.sin(src)), (hi - lo) * 0.5 * math.cos(src)


def _run_forward(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor, cfg: PlaneConfig,
                 u_shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """y, u (one per group: flat, or ``u_shape``) and the per-group stats, from the C kernel."""
    groups, channels = _check_forward(x, w, b, lam_src, cfg)
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused R-LayerNorm kernel is not available: {reason()}")
    lam, _ = _lambda(lam_src, cfg)
    y = torch.empty_like(x)
    # every buffer is made on the CPU explicitly: under a default device (torch.device("meta"), set_default_device)
    # a bare torch.empty would hand C a pointer it cannot write
    u = torch.empty(groups if u_shape is None else u_shape, dtype=torch.float32, device="cpu")
    stats = torch.empty(groups, _NSTAT, dtype=torch.float64, device="cpu")
    rc = lib.rln_forward_f32(x.data_ptr(), groups, cfg.p, cfg.l, cfg.two_d, cfg.bayes, cfg.eps, lam, cfg.alpha,
                             cfg.mode, _p(w), _p(b), channels, y.data_ptr(), u.data_ptr(), stats.data_ptr(),
                             torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({cfg.p}, {cfg.l})")
    return y, u, stats


def _run_backward(x: Tensor, w: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
                  cfg: PlaneConfig, need_w: bool, need_b: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """(dx, dweight, dbias, dlam_src) from the C kernel; dweight/dbias None where not asked for or absent."""
    groups, channels = _check_backward(x, w, lam_src, stats, gy, gu if cfg.bayes else None, cfg)
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused R-LayerNorm kernel is not available: {reason()}")
    lam, dlam = _lambda(lam_src, cfg)
    gx = torch.empty_like(x)
    g_l = torch.empty_like(lam_src)
    g_w = torch.empty_like(w) if (w is not None and need_w) else None
    g_b = torch.empty_like(w) if (w is not None and need_b) else None
    rc = lib.rln_backward_f32(x.data_ptr(), gy.data_ptr(), _p(gu if cfg.bayes else None), groups, cfg.p, cfg.l,
                              cfg.two_d, cfg.bayes, cfg.eps, lam, dlam, cfg.alpha, cfg.mode, _p(w), channels,
                              stats.data_ptr(), gx.data_ptr(), g_l.data_ptr(), _p(g_w), _p(g_b),
                              torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({cfg.p}, {cfg.l})")
    return gx, g_w, g_b, g_l


def plain(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor, cfg: PlaneConfig) -> tuple[Tensor, Tensor]:
    """The kernel's ``(y, u)`` (u flat, one per group) in plain torch operations: the reference that double
    backward differentiates."""
    lam = lam_src if cfg.lo is None else lambda_of(lam_src, cfg.lo, cfg.hi)
    if cfg.mode == 1:
        planes = x
        wv = w.reshape(-1, 1, 1) if w is not None else None
        bv = b.reshape(-1, 1, 1) if b is not None else None
    else:
        planes = x.reshape(-1, cfg.p, cfg.l)
        wv = w.reshape(cfg.p, cfg.l) if w is not None else None
        bv = b.reshape(cfg.p, cfg.l) if b is not None else None
    y, u = plain_planes(planes, wv, bv, lam.reshape(()), cfg.eps, cfg.alpha, cfg.bayes, cfg.two_d)
    return y.reshape(x.shape), u.reshape(-1)


def _differentiable_vjp(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor, cfg: PlaneConfig,
                        needs: tuple[bool, ...], gy: Tensor | None, gu: Tensor | None) -> tuple[Tensor | None, ...]:
    def formula(*t: Any) -> tuple[Tensor, ...]:
        return plain(t[0], t[1], t[2], t[3], cfg)

    return recompute_vjp(formula, (x, w, b, lam_src), needs[:4], (gy, gu.reshape(-1) if gu is not None else None))


# ---- the torch operators ----------------------------------------------------------------------------------


@torch.library.custom_op("rln_verified::rnorm_forward", mutates_args=(), device_types="cpu")
def rnorm_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor, lo: float | None, hi: float,
                  eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int,
                  l: int) -> tuple[Tensor, Tensor, Tensor]:  # noqa: E741
    """(y, u, stats) of the fused kernel: u one per group (flat), stats (groups, 4) float64 for the backward. In the
    2d layout the planes are x's last two dims (:func:`_planes`)."""
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    return _run_forward(x, weight, bias, lam_src, PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l))


@rnorm_forward.register_fake
def _(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor, lo: float | None, hi: float, eps: float,
      alpha: float, bayes: bool, two_d: bool, mode: int, p: int, l: int) -> tuple[Tensor, Tensor, Tensor]:  # noqa: E741
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    groups = _check_forward_shapes(x, weight, bias, lam_src, PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l))
    return torch.empty_like(x), x.new_empty(groups), x.new_empty((groups, _NSTAT), dtype=torch.float64)


@torch.library.custom_op("rln_verified::rnorm_backward", mutates_args=(), device_types="cpu")
def rnorm_backward(x: Tensor, weight: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
                   lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int,
                   l: int, need_w: bool, need_b: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: E741
    """(dx, dweight, dbias, dlam_src) of the fused kernel; dweight/dbias are empty where not asked for."""
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    cfg = PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l)
    gx, g_w, g_b, g_l = _run_backward(x, weight, lam_src, stats, gy, gu, cfg, need_w, need_b)
    empty = x.new_empty(0)
    return gx, (g_w if g_w is not None else empty), (g_b if g_b is not None else empty.clone()), g_l


@rnorm_backward.register_fake
def _(x: Tensor, weight: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
      lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int, l: int,  # noqa: E741
      need_w: bool, need_b: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    _check_forward_shapes(x, weight, None, lam_src, PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l))
    g_w = torch.empty_like(weight) if (weight is not None and need_w) else x.new_empty(0)
    g_b = torch.empty_like(weight) if (weight is not None and need_b) else x.new_empty(0)
    return torch.empty_like(x), g_w, g_b, torch.empty_like(lam_src)


def _check_forward_shapes(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor, cfg: PlaneConfig) -> int:
    """The shape part of :func:`_check_forward` (fake tensors have no data and may be non-contiguous views), and the
    configuration's numbers."""
    _check_numbers(cfg)
    for name, t in (("x", x), ("weight", w), ("bias", b), ("lambda", lam_src)):
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"rnorm kernel: {name} must be torch.float32, got {t.dtype}")
    groups = _groups(x, cfg)
    if w is not None and w.numel() != _affine_numel(x, cfg):
        raise ValueError(f"rnorm kernel: weight has {w.numel()} elements, expected {_affine_numel(x, cfg)}")
    return groups


# ---- the CUDA kernels: Triton, or the plain formula ------------------------------------------------------
#
# With Triton installed (the triton extra) and a plane of at most rnorm_triton.MAX_M elements, the operators' CUDA
# kernels are the fused Triton kernels of ``rnorm_triton`` (N11's bound), which save the same per-group stats as the
# C kernel. Otherwise they evaluate ``plain`` (the formula of N0 in torch operations, float32 planes with float64
# per-group sums); ``stats`` is then a placeholder, zeros of the (groups, 4) float64 shape the schema and the fake
# kernel promise, which the backward does not read, since it differentiates the formula at the saved inputs. Both
# functions take the same branch for the same input (``rnorm_triton.usable``). Either way a float32 CUDA call takes
# the operator path in eager mode, under torch.compile and under autocast alike. The plain branch reads no data
# pointer and the Triton one runs under Triton's interpreter, so the tests call both on CPU tensors.


def _check_formula_args(x: Tensor, w: Tensor | None, b: Tensor | None, lam_src: Tensor, cfg: PlaneConfig) -> int:
    """The number of groups, after the checks of the C boundary that do not concern memory: dtype, sizes, the affine
    mode, and every tensor on x's device."""
    if cfg.mode not in (0, 1, 2):
        raise ValueError(f"rnorm kernel: mode must be 0, 1 or 2, got {cfg.mode}")
    groups = _check_forward_shapes(x, w, b, lam_src, cfg)
    if lam_src.numel() != 1:
        raise ValueError(f"rnorm kernel: lambda must have 1 elements, got {lam_src.numel()}")
    if w is None and (b is not None or cfg.mode != 0):
        raise ValueError("rnorm kernel: a bias or an affine mode needs a weight")
    if w is not None and b is not None and b.numel() != w.numel():
        raise ValueError(f"rnorm kernel: bias must have {w.numel()} elements, got {b.numel()}")
    for name, t in (("weight", w), ("bias", b), ("lambda", lam_src)):
        if t is not None and t.device != x.device:
            raise ValueError(f"rnorm kernel: {name} is on {t.device}, x on {x.device}; move both to one device")
    return groups


@rnorm_forward.register_kernel("cuda")
def cuda_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor, lo: float | None, hi: float,
                 eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int,
                 l: int) -> tuple[Tensor, Tensor, Tensor]:  # noqa: E741
    """The CUDA kernel of ``rnorm_forward``: ``(y, u, stats)`` from the Triton kernel where
    ``rnorm_triton.usable`` holds (N11), else from the plain formula (N0, same values up to rounding) with ``stats``
    zeros (a placeholder only :func:`cuda_backward` receives)."""
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    cfg = PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l)
    groups = _check_formula_args(x, weight, bias, lam_src, cfg)
    if rnorm_triton.usable(x, two_d, p, l):
        return rnorm_triton.forward(x, weight, bias, lam_src, *cfg, groups, _channels(x, cfg))
    y, u = plain(x, weight, bias, lam_src, cfg)
    return y.contiguous(), u.contiguous(), x.new_zeros((groups, _NSTAT), dtype=torch.float64)


@rnorm_backward.register_kernel("cuda")
def cuda_backward(x: Tensor, weight: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
                  lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int,
                  l: int, need_w: bool, need_b: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: E741
    """The CUDA kernel of ``rnorm_backward``: the Triton kernel from the saved ``stats`` where
    ``rnorm_triton.usable`` holds (the branch :func:`cuda_forward` took), else the VJP of the plain formula at ``x``
    (``torch.func.vjp``, which works below the dispatcher's autograd key, where a kernel runs), for which ``stats``
    is checked for shape only and not read.

    The backward op receives no bias: y is ``... + bias``, so dL/dbias does not depend on its value, and the VJP is
    taken at a zero bias of the weight's shape."""
    p, l = _planes(x, two_d, p, l)  # noqa: E741
    cfg = PlaneConfig(lo, hi, eps, alpha, bayes, two_d, mode, p, l)
    groups = _check_formula_args(x, weight, None, lam_src, cfg)
    if stats.dtype != torch.float64 or stats.numel() != groups * _NSTAT:
        raise ValueError(f"rnorm kernel: stats must be {groups * _NSTAT} float64 values, got {stats.numel()} "
                         f"{stats.dtype}")
    if gy.dtype != torch.float32 or gy.shape != x.shape:
        raise ValueError(f"rnorm kernel: grad of y must be float32 of shape {tuple(x.shape)}, got {gy.dtype} "
                         f"{tuple(gy.shape)}")
    if gu is not None and (gu.dtype != torch.float32 or gu.numel() != groups):
        raise ValueError(f"rnorm kernel: grad of u must be {groups} float32 values, got {gu.numel()} {gu.dtype}")
    if rnorm_triton.usable(x, two_d, p, l):
        return rnorm_triton.backward(x, weight, lam_src, stats, gy, gu, *cfg, need_w, need_b, groups,
                                     _channels(x, cfg))
    gu_flat = gu.reshape(-1) if (gu is not None and bayes) else x.new_zeros(groups)
    bias0 = torch.zeros_like(weight) if (weight is not None and need_b) else None

    def formula(x_: Tensor, lam_: Tensor, *affine: Tensor) -> tuple[Tensor, Tensor]:
        w_ = affine[0] if weight is not None else None
        b_ = affine[1] if bias0 is not None else None
        return plain(x_, w_, b_, lam_, cfg)

    primals = [x, lam_src] + ([weight] if weight is not None else []) + ([bias0] if bias0 is not None else [])
    vjp_fn = torch.func.vjp(formula, *primals)[1]
    grads = vjp_fn((gy, gu_flat))
    empty = x.new_empty(0)
    g_w = grads[2].contiguous() if (weight is not None and need_w) else empty
    g_b = grads[3].contiguous() if bias0 is not None else empty.clone()
    return grads[0].contiguous(), g_w, g_b, grads[1].contiguous()


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, weight, bias, lam_src, *rest = inputs
    _, _, stats = output
    cfg = PlaneConfig(*rest)
    p, l_ = _planes(x, cfg.two_d, cfg.p, cfg.l)
    ctx.cfg = cfg._replace(p=p, l=l_)
    ctx.save_for_backward(x, weight, bias, lam_src, stats)
    ctx.mark_non_differentiable(stats)


def _op_backward(ctx: Any, gy: Tensor | None, gu: Tensor | None, _gstats: Tensor | None) -> tuple[Tensor | None, ...]:
    x, weight, bias, lam_src, stats = ctx.saved_tensors
    cfg: PlaneConfig = ctx.cfg
    need = ctx.needs_input_grad
    none9: tuple[None, ...] = (None,) * 9
    if torch.is_grad_enabled():
        return (*_differentiable_vjp(x, weight, bias, lam_src, cfg, need, gy, gu), *none9)
    gy_c = torch.zeros_like(x) if gy is None else gy.to(torch.float32).contiguous()
    gu_c = gu.to(torch.float32).contiguous() if (gu is not None and cfg.bayes) else None
    gx, g_w, g_b, g_l = torch.ops.rln_verified.rnorm_backward(
        x, weight, lam_src, stats, gy_c, gu_c, *cfg, weight is not None and need[1], weight is not None and need[2])
    return (gx, g_w if need[1] and weight is not None else None, g_b if need[2] and bias is not None else None,
            g_l if need[3] else None, *none9)


rnorm_forward.register_autograd(_op_backward, setup_context=_setup_context)
# Autocast: the kernel computes in float32 with float64 sums; the layers upcast before they get here, and the
# operator itself asks for float32 inputs under CPU and CUDA autocast (torchvision's roi_align does the same).
torch.library.register_autocast("rln_verified::rnorm_forward", "cpu", torch.float32)
torch.library.register_autocast("rln_verified::rnorm_forward", "cuda", torch.float32)


# ---- the eager node ---------------------------------------------------------------------------------------


class _NativeFn(torch.autograd.Function):
    """The fused kernel as an autograd node for plain eager calls. Saves x, the weight, the bias, lambda's source and
    per group (mean, 1/sigma, r, a) in float64: no tensor the size of the input besides the input itself."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor,
                cfg: PlaneConfig, u_shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        y, u, stats = _run_forward(x, weight, bias, lam_src, cfg, u_shape)
        ctx.save_for_backward(x, weight, bias, lam_src, stats)
        ctx.cfg = cfg
        if not cfg.bayes:
            ctx.mark_non_differentiable(u)
        ctx.set_materialize_grads(False)  # an unused u gets no zero-filled cotangent
        return y, u

    @staticmethod
    def backward(ctx: Any, gy: Tensor | None, gu: Tensor | None) -> tuple[Any, ...]:
        x, w, b, lam_src, stats = ctx.saved_tensors
        cfg: PlaneConfig = ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula (every order)
            return (*_differentiable_vjp(x, w, b, lam_src, cfg, need, gy, gu), None, None)
        gy_c = torch.zeros_like(x) if gy is None else gy.to(torch.float32).contiguous()
        gu_c = gu.to(torch.float32).contiguous() if (gu is not None and cfg.bayes) else None
        gx, g_w, g_b, g_l = _run_backward(x, w, lam_src, stats, gy_c, gu_c, cfg, need[1], need[2])
        return gx, g_w, g_b, (g_l if need[3] else None), None, None


def apply(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor, cfg: PlaneConfig,
          u_shape: tuple[int, ...], eager: bool | None = None) -> tuple[Tensor, Tensor]:
    """y (shaped like x) and u (``u_shape``) with x viewed as (p, l) planes. Call only where :func:`usable` holds.

    A plain eager call runs the eager node (or no node at all when no graph is recorded); anything that records or
    transforms the call gets the operator ``rln_verified::rnorm_forward``. ``eager``: the caller's answer of
    ``_dispatch.eager_f32`` for these tensors, or None to ask here."""
    x = x.contiguous()  # a copy, where one is made, is recorded by autograd like any other op
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    if eager is None:
        eager = fused_eager_ok(x, weight, bias, lam_src)
    if eager:
        if torch.is_grad_enabled() and (x.requires_grad or lam_src.requires_grad
                                        or (weight is not None and weight.requires_grad)
                                        or (bias is not None and bias.requires_grad)):
            out = _NativeFn.apply(x, weight, bias, lam_src, cfg, u_shape)  # type: ignore[no-untyped-call]
            return out[0], out[1]
        y, u, _ = _run_forward(x, weight, bias, lam_src, cfg, u_shape)  # no graph to record: no autograd node
        return y, u
    y, u, _ = torch.ops.rln_verified.rnorm_forward(x, weight, bias, lam_src, *cfg)
    return y, u.reshape(u_shape)


__all__ = ["PlaneConfig", "apply", "available", "cuda_backward", "cuda_forward", "disabled", "eager_usable", "library",
           "plain", "reason", "rnorm_backward", "rnorm_forward", "scalar_psi", "usable", "vector_paths",
           "vector_psi_expm1"]
