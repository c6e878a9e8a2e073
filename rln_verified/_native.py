"""The fused float32 CPU kernel of the R-LayerNorm layers (``_native/rnorm.c``), built on first use.

The C source is compiled once per machine with the system C compiler into a cache folder
(``$RLN_VERIFIED_CACHE``, else ``$XDG_CACHE_HOME/rln_verified``, else ``~/.cache/rln_verified``) and loaded
with ctypes. It needs no Python or torch headers and builds in under a second. When no compiler is found,
the build fails, or ``RLN_VERIFIED_NATIVE=0`` is set, :func:`available` is False and the layers use the eager
kernel in ``_rnorm.py``, which computes the same formula (proofs/norm.md, N2-F).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

_SRC = Path(__file__).with_name("_native") / "rnorm.c"
# -ffp-contract=off keeps every product and sum a separately rounded IEEE operation, as the N11 proof counts them.
# -march=native: the build is cached per machine (the key below includes the CPU's name and feature flags).
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off", "-pthread", "-fopenmp-simd",
          "-march=native"]
_ABI = 5
_NSTAT = 4  # per-group float64 values saved for backward (rnorm.c, NSTAT)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_why: str = "not built yet"

_i64, _int, _dbl, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p


def _cache_dir() -> Path:
    env = os.environ.get("RLN_VERIFIED_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rln_verified"


def _cpu_id() -> str:
    """The CPU's model name and feature flags (a -march=native build is only reused on the same kind of CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *_FLAGS, platform.machine(), sys.platform, _cpu_id()]).encode())
    key_s = key.hexdigest()[:16]
    out = _cache_dir() / f"rnorm-{key_s}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / out.name
            proc = subprocess.run([cc, *_FLAGS, str(_SRC), "-o", str(part), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
            os.replace(part, out)  # atomic: concurrent builders never see a partial file
    lib = ctypes.CDLL(str(out))
    if lib.rln_abi_version() != _ABI or lib.rln_stats_per_group() != _NSTAT:
        raise RuntimeError(f"stale native kernel at {out}")
    lib.rln_forward_f32.argtypes = [_ptr, _i64, _i64, _i64, _int, _int, _dbl, _dbl, _dbl, _int, _ptr, _ptr, _i64,
                                    _ptr, _ptr, _ptr, _int]
    lib.rln_backward_f32.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _i64, _int, _int, _dbl, _dbl, _dbl, _dbl, _int,
                                     _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _int]
    for fn in (lib.rln_forward_f32, lib.rln_backward_f32):
        fn.restype = _int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on first call; None when it cannot be had (see :func:`reason`)."""
    global _lib, _tried, _why
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("RLN_VERIFIED_NATIVE", "1") == "0":
                _why = "disabled by RLN_VERIFIED_NATIVE=0"
            else:
                try:
                    _lib = _build()
                    _why = "built"
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    _why = f"unavailable: {exc}"
            _tried = True
    return _lib


_off = 0  # depth of active `disabled()` blocks


def available() -> bool:
    """True when the fused kernel is built and not switched off by :func:`disabled`."""
    return _off == 0 and library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Route every call through the eager kernel inside this block (tests compare the two paths)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def reason() -> str:
    """Why the kernel is or is not in use, for reports."""
    library()
    return _why


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else int(t.data_ptr())


def _plain(t: torch.Tensor | None) -> bool:
    """A float32 CPU tensor that is not wrapped by torch.func (vmap, grad, jacrev)."""
    return t is None or (t.dtype == torch.float32 and t.device.type == "cpu"
                         and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def usable(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lam: torch.Tensor,
           mode: int, p: int, l_: int) -> bool:
    """True when the fused kernel applies to ``x`` viewed as contiguous (p, l_) planes: float32 CPU tensors, not
    under torch.func or torch.compile, with an affine of the given mode (0 none; 1 per channel of an (N, C, H, W)
    input; 2 one value per plane element)."""
    if torch.compiler.is_compiling() or x.numel() == 0 or lam.numel() != 1 or p < 1 or l_ < 2:
        return False
    if not (_plain(x) and _plain(weight) and _plain(bias) and _plain(lam)):
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


class _NativeFn(torch.autograd.Function):
    """The fused kernel as an autograd Function. Saves x, the weight, lambda's source and per group
    (mean, 1/sigma, r, a) in float64: no tensor the size of the input besides the input itself.

    ``lam_src`` is lambda itself (``lo`` is None) or the raw parameter of N8, lambda = lo + (hi - lo)(1 + sin raw)/2.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                lam_src: torch.Tensor, lo: float | None, hi: float, eps: float, alpha: float, bayes: bool,
                two_d: bool, mode: int, p: int, l_: int, u_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        lib = library()
        assert lib is not None
        x = x.contiguous()
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        groups = x.numel() // (p * l_)
        channels = x.shape[1] if mode == 1 else 1
        src = float(lam_src)
        lam = src if lo is None else lo + (hi - lo) * 0.5 * (1.0 + math.sin(src))
        y = torch.empty_like(x)
        u = torch.empty(u_shape, dtype=x.dtype)
        stats = torch.empty(groups, _NSTAT, dtype=torch.float64)
        rc = lib.rln_forward_f32(x.data_ptr(), groups, p, l_, two_d, bayes, eps, lam, alpha, mode, _p(w), _p(b),
                                 channels, y.data_ptr(), u.data_ptr(), stats.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({p}, {l_})")
        ctx.save_for_backward(x, w, lam_src, stats)
        ctx.cfg = (lam, 1.0 if lo is None else (hi - lo) * 0.5 * math.cos(src), eps, alpha, bayes, two_d, mode,
                   channels, b is not None, p, l_)
        if not bayes:
            ctx.mark_non_differentiable(u)
        return y, u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor | None, gu: torch.Tensor | None) -> tuple[Any, ...]:
        lib = library()
        assert lib is not None
        x, w, lam_src, stats = ctx.saved_tensors
        lam, dlam, eps, alpha, bayes, two_d, mode, channels, has_bias, p, l_ = ctx.cfg
        groups = x.numel() // (p * l_)
        gy_c = torch.zeros_like(x) if gy is None else gy.to(torch.float32).contiguous()
        gu_c = gu.to(torch.float32).contiguous() if (gu is not None and bayes) else None
        need = ctx.needs_input_grad
        gx = torch.empty_like(x)
        g_l = torch.empty_like(lam_src)
        g_w = torch.empty_like(w) if (w is not None and need[1]) else None
        g_b = torch.empty_like(w) if (w is not None and has_bias and need[2]) else None
        rc = lib.rln_backward_f32(x.data_ptr(), gy_c.data_ptr(), _p(gu_c), groups, p, l_, two_d, bayes, eps, lam,
                                  dlam, alpha, mode, _p(w), channels, stats.data_ptr(), gx.data_ptr(), g_l.data_ptr(),
                                  _p(g_w), _p(g_b), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"native R-LayerNorm kernel failed (code {rc}) on planes of shape ({p}, {l_})")
        return gx, g_w, g_b, (g_l if need[3] else None), None, None, None, None, None, None, None, None, None, None


def apply(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lam_src: torch.Tensor,
          lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int, l_: int,
          u_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """y (shaped like x) and u (``u_shape``) with x viewed as (p, l_) planes; see :class:`_NativeFn`.
    Call only where :func:`usable` holds."""
    out = _NativeFn.apply(x, weight, bias, lam_src, lo, hi, eps, alpha, bayes, two_d, mode, p, l_,  # type: ignore[no-untyped-call]
                          u_shape)
    return out[0], out[1]


__all__ = ["apply", "available", "disabled", "library", "reason", "usable"]
