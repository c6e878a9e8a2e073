"""The R-LayerNorm planes as Triton kernels: the CUDA implementation of ``rln_verified::rnorm_forward`` /
``rnorm_backward`` when Triton is installed (the ``triton`` extra).

One program per group holds the whole (P, L) plane, ``P L <= MAX_M`` elements. Every sum and per-group scalar is
float64, as in ``rnorm.c``, so N11's bound holds as proved there: its proof uses only that float32 values are read
exactly, that a sum of ``n`` float64 terms has error ``<= (n - 1) 2^-53 sum |terms|`` whatever the order of the
additions (a reduction tree is one such order), and that the outputs round once to float32 (proofs/norm.md, N11).
The window sums of the backward go through a float64 scratch per group, with a barrier between passes.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the same kernels on CPU tensors; ``tests/triton_cells.py`` checks
them there against the float64 formula. Constants are formed in float64 from small integers: Triton types a Python
float as float32.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the triton extra is not installed
    triton = None
    tl = None

#: The largest plane one program holds (float64 registers); larger planes take the plain formula.
MAX_M = 16384

_NSTAT = 4  # per group: mean, 1/sigma, r, a (as rnorm.c)


def available() -> bool:
    """Triton is importable."""
    return triton is not None


# Triton decides at import, when its decorator runs, whether a kernel is compiled or interpreted; so does this module.
_INTERPRET = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    """Triton runs its interpreter (``TRITON_INTERPRET=1`` when it was imported): the kernels take CPU tensors."""
    return _INTERPRET


def usable(x: Tensor, two_d: bool, p: int, l_: int) -> bool:
    """The Triton kernels apply: Triton is here, x is a CUDA tensor (or a CPU one under the interpreter), and the
    (p, l_) plane fits one program (``2 <= l_``, ``p >= 2`` for 2d windows, ``p l_ <= MAX_M``)."""
    if triton is None or not (x.is_cuda or (x.is_cpu and interpreting())):
        return False
    return l_ >= 2 and p >= (2 if two_d else 1) and p * l_ <= MAX_M


if triton is not None:

    @triton.jit
    def _reuse(k: Any, n: Any, one: Any) -> Any:
        # reuse weights of a reflect-padded axis of length n (N0): 2/3, 4/3, 1, ..., 1, 4/3, 2/3; n = 3: 2/3, 5/3,
        # 2/3; n = 2: 1, 1. Formed as integers over 3 in float64.
        thirds = tl.where((k == 0) | (k == n - 1), 2.0, tl.where((k == 1) | (k == n - 2), 4.0, 3.0))
        thirds = tl.where((n == 3) & (k == 1), 5.0, thirds)
        thirds = tl.where(n == 2, 3.0, thirds)
        return (one * thirds) / 3.0

    @triton.jit
    def _log1p(t: Any) -> Any:
        # log(1 + t) to a few ulps for t >= 0, from log alone: log(w) t / (w - 1) with w = 1 + t rounded
        w = 1.0 + t
        d = tl.where(w == 1.0, 1.0, w - 1.0)
        return tl.where(w == 1.0, t, tl.log(w) * (t / d))

    @triton.jit
    def _expm1(z: Any) -> Any:
        # exp(z) - 1 to a few ulps, from exp and log: (w - 1) z / log(w) with w = exp(z) rounded
        w = tl.exp(z)
        lw = tl.where((w == 1.0) | (w == 0.0), 1.0, tl.log(w))
        return tl.where(w == 1.0, z, tl.where(w == 0.0, -1.0, (w - 1.0) * (z / lw)))

    @triton.jit
    def _psi(t: Any, one: Any) -> Any:
        # psi(t) = log(1 + t) - t/(1 + t) (PSI-1): the series in w = t/(2 + t) up to the split 0.1, else the direct
        # form, as rnorm.c; t = inf gives inf, NaN stays NaN
        w = t / (2.0 + t)
        z = w * w
        a = one / 13.0 + z * (one / 15.0)
        a = one / 11.0 + z * a
        a = one / 9.0 + z * a
        a = one / 7.0 + z * a
        a = one / 5.0 + z * a
        a = one / 3.0 + z * a
        series = 2.0 * z / (1.0 + w) + 2.0 * w * z * a
        direct = _log1p(t) - t / (1.0 + t)
        out = tl.where(t <= one / 10.0, series, direct)
        return tl.where(t > 1.7976931348623157e308, t, out)  # inf stays inf

    @triton.jit
    def _dpsi(t: Any) -> Any:
        # psi'(t) = t/(1 + t)^2 clamped to its bound 1/4 (PSI-3, PSI-4); 0 at t = inf
        d = (t / (1.0 + t)) / (1.0 + t)
        d = tl.where(d > 0.25, 0.25, d)
        return tl.where(t > 1.7976931348623157e308, 0.0, d)

    @triton.jit
    def _centred(base: Any, row: Any, col: Any, mean: Any, live: Any, L: Any) -> Any:
        return tl.where(live, tl.load(base + row * L + col, mask=live, other=0.0).to(tl.float64) - mean, 0.0)

    @triton.jit
    def _hsum(base: Any, row: Any, jl: Any, j: Any, jr: Any, mean: Any, live: Any, L: Any) -> Any:
        # horizontal window of the centred values (reflect padding)
        return (_centred(base, row, jl, mean, live, L) + _centred(base, row, j, mean, live, L)
                + _centred(base, row, jr, mean, live, L))

    @triton.jit
    def _plane(P: Any, L: Any, BLOCK: tl.constexpr) -> Any:
        # this program's group, its size M = P L, and each lane's offset, liveness, row and column
        offs = tl.arange(0, BLOCK)
        return tl.program_id(0).to(tl.int64), P * L, offs, offs < P * L, offs // L, offs % L

    @triton.jit
    def _fwd_kernel(x_ptr: Any, w_ptr: Any, b_ptr: Any, scal_ptr: Any, y_ptr: Any, u_ptr: Any, stats_ptr: Any,
                    P: Any, L: Any, C: Any, TWO_D: tl.constexpr, BAYES: tl.constexpr, MODE: tl.constexpr,
                    HAS_B: tl.constexpr, BLOCK: tl.constexpr) -> None:
        g, M, offs, live, i, j = _plane(P, L, BLOCK)
        eps = tl.load(scal_ptr)
        lam = tl.load(scal_ptr + 1)
        alpha = tl.load(scal_ptr + 2)
        one = eps * 0.0 + 1.0  # float64 1
        base = x_ptr + g * M
        x = tl.load(base + offs, mask=live, other=0.0).to(tl.float64)
        mean = tl.sum(x, axis=0) / M
        xc = tl.where(live, x - mean, 0.0)
        jl = tl.where(j == 0, 1, j - 1)
        jr = tl.where(j == L - 1, L - 2, j + 1)
        h = _hsum(base, i, jl, j, jr, mean, live, L)
        wf = _reuse(j, L, one)
        if TWO_D:
            iu = tl.where(i == 0, 1, i - 1)
            idn = tl.where(i == P - 1, P - 2, i + 1)
            bx = _hsum(base, iu, jl, j, jr, mean, live, L) + h + _hsum(base, idn, jl, j, jr, mean, live, L)
            wf = wf * _reuse(i, P, one)
            cw = one * 9.0
        else:
            bx = h
            cw = one * 3.0
        x2 = xc * xc
        ss = tl.sum(x2, axis=0)
        ssw = tl.sum(wf * x2, axis=0)
        sbx = tl.sum(bx * bx, axis=0)
        nu = (ssw - sbx / (cw * cw)) / M
        nu = tl.where(nu < 0.0, 0.0, nu)  # a NaN stays NaN
        ve = ss / M + eps
        sig = tl.sqrt(ve)
        isig = one / sig
        r = nu / ve
        t = lam * r
        if BAYES:
            z = -alpha * _psi(t, one)
            em = _expm1(z)
            ka = tl.exp(z) / sig  # not (1 + em)/sig, which loses exp(z) below 2^-53 (rnorm.c, fwd_scalars)
            u = -em * (2.0 + em)
        else:
            ka = one / (sig * (1.0 + t))
            u = one * 0.0
        tl.store(u_ptr + g, u.to(tl.float32))
        tl.store(stats_ptr + g * 4, mean)
        tl.store(stats_ptr + g * 4 + 1, isig)
        tl.store(stats_ptr + g * 4 + 2, r)
        tl.store(stats_ptr + g * 4 + 3, ka)
        if MODE == 1:
            ch = g % C
            sc = ka * tl.load(w_ptr + ch).to(tl.float64)
            if HAS_B:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
                y = xc * sc + tl.load(b_ptr + ch).to(tl.float64)
            else:
                y = xc * sc
        elif MODE == 2:
            we = tl.load(w_ptr + offs, mask=live, other=0.0).to(tl.float64)
            if HAS_B:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
                y = (xc * ka) * we + tl.load(b_ptr + offs, mask=live, other=0.0).to(tl.float64)
            else:
                y = (xc * ka) * we
        else:
            y = xc * ka
        tl.store(y_ptr + g * M + offs, y.to(tl.float32), mask=live)

    @triton.jit
    def _adj(s_ptr: Any, k: Any, n: Any, stride: Any, other: Any, live: Any) -> Any:
        # adjoint of the reflect-padded window of 3 along an axis of length n (position k, neighbours `stride`
        # apart): zero-padded 3-sums, with the reflected lanes folded onto 1 and n - 2
        c = tl.load(s_ptr + other + k * stride, mask=live, other=0.0)
        lo = tl.load(s_ptr + other + (k - 1) * stride, mask=live & (k >= 1), other=0.0)
        hi = tl.load(s_ptr + other + (k + 1) * stride, mask=live & (k <= n - 2), other=0.0)
        f0 = tl.load(s_ptr + other, mask=live & (k == 1), other=0.0)
        f1 = tl.load(s_ptr + other + (n - 1) * stride, mask=live & (k == n - 2), other=0.0)
        return lo + c + hi + f0 + f1

    @triton.jit
    def _bwd_kernel(x_ptr: Any, w_ptr: Any, gy_ptr: Any, gu_ptr: Any, stats_ptr: Any, scal_ptr: Any, gx_ptr: Any,
                    s1_ptr: Any, s2_ptr: Any, gl_ptr: Any, gw_ptr: Any, gb_ptr: Any, P: Any, L: Any, C: Any,
                    TWO_D: tl.constexpr, BAYES: tl.constexpr, MODE: tl.constexpr, HAS_GU: tl.constexpr,
                    BLOCK: tl.constexpr) -> None:
        g, M, offs, live, i, j = _plane(P, L, BLOCK)
        lam = tl.load(scal_ptr + 1)
        alpha = tl.load(scal_ptr + 2)
        one = lam * 0.0 + 1.0
        mean = tl.load(stats_ptr + g * 4)
        isig = tl.load(stats_ptr + g * 4 + 1)
        r = tl.load(stats_ptr + g * 4 + 2)
        ka = tl.load(stats_ptr + g * 4 + 3)
        t = lam * r
        if BAYES:
            inv_f = ka / isig
            dlogf = alpha * _dpsi(t)
            q = dlogf * inv_f
            one_m_u = inv_f * inv_f
        else:
            dlogf = one / (1.0 + t)
            q = dlogf * dlogf
            one_m_u = one
        x = tl.load(x_ptr + g * M + offs, mask=live, other=0.0).to(tl.float64)
        xc = tl.where(live, x - mean, 0.0)
        gy = tl.load(gy_ptr + g * M + offs, mask=live, other=0.0).to(tl.float64)
        if MODE == 2:
            we = tl.load(w_ptr + offs, mask=live, other=0.0).to(tl.float64)
            gg = gy * we
            gg_sum = tl.sum(gg, axis=0)
            ggxc = tl.sum(gg * xc, axis=0)
            tl.store(gw_ptr + g * M + offs, gy * (xc * ka), mask=live)
            tl.store(gb_ptr + g * M + offs, gy, mask=live)
            ga = ka
        else:
            gy_sum = tl.sum(gy, axis=0)
            gyxc = tl.sum(gy * xc, axis=0)
            if MODE == 1:
                wc = tl.load(w_ptr + g % C).to(tl.float64)
                tl.store(gw_ptr + g, gyxc * ka)
                tl.store(gb_ptr + g, gy_sum)
            else:
                wc = one
            gg_sum = gy_sum * wc
            ggxc = gyxc * wc
            gg = gy * wc
            ga = ka
        a_sum = ggxc * isig
        g_t = -a_sum * q
        if BAYES and HAS_GU:
            g_t += tl.load(gu_ptr + g).to(tl.float64) * 2.0 * dlogf * one_m_u
        coef = (g_t * lam) * ((one * 2.0) / M) * (isig * isig)
        k_xc = -(a_sum / M) * ka * isig + coef * (1.0 - r)
        k_0 = -(gg_sum / M) * ka
        k_1 = k_xc - coef
        # z = B^T B x_c = H^T V^T V H x_c through the float64 scratch (rnorm.c's order of passes)
        s1 = s1_ptr + g * M
        s2 = s2_ptr + g * M
        tl.store(s1 + offs, xc, mask=live)
        tl.debug_barrier()
        jl = tl.where(j == 0, 1, j - 1)
        jr = tl.where(j == L - 1, L - 2, j + 1)
        h = (tl.load(s1 + i * L + jl, mask=live, other=0.0) + xc + tl.load(s1 + i * L + jr, mask=live, other=0.0))
        tl.store(s2 + offs, h, mask=live)
        tl.debug_barrier()
        if TWO_D:
            iu = tl.where(i == 0, 1, i - 1)
            idn = tl.where(i == P - 1, P - 2, i + 1)
            v = tl.load(s2 + iu * L + j, mask=live, other=0.0) + h + tl.load(s2 + idn * L + j, mask=live, other=0.0)
            tl.store(s1 + offs, v, mask=live)
            tl.debug_barrier()
            va = _adj(s1, i, P, L, j, live)
            tl.store(s2 + offs, va, mask=live)
            tl.debug_barrier()
            wf = _reuse(j, L, one) * _reuse(i, P, one)
            cw = one * 9.0
        else:
            wf = _reuse(j, L, one)
            cw = one * 3.0
        z = _adj(s2, j, L, 1, i * L, live)
        k_b = -coef / (cw * cw)
        gx = gg * ga + (coef * wf + k_1) * xc + (k_b * z + k_0)
        tl.store(gx_ptr + g * M + offs, gx.to(tl.float32), mask=live)
        tl.store(gl_ptr + g, g_t * r)


def _warps(block: int) -> int:
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


def _scalars(lam_src: Tensor, lo: float | None, hi: float, eps: float, alpha: float) -> tuple[Tensor, Tensor]:
    """``[eps, lambda, alpha]`` as float64 on the input's device, and d lambda / d lam_src (N8), without a sync."""
    src = lam_src.reshape(()).to(torch.float64)
    if lo is None:
        lam, dlam = src, torch.ones_like(src)
    else:
        lam = lo + (hi - lo) * 0.5 * (1.0 + torch.sin(src))
        dlam = (hi - lo) * 0.5 * torch.cos(src)
    scal = torch.stack([torch.full_like(src, eps), lam, torch.full_like(src, alpha)])
    return scal, dlam


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, lam_src: Tensor, lo: float | None, hi: float,
            eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int, l_: int,
            groups: int, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """(y, u flat, stats (groups, 4) float64). The caller has checked dtypes, sizes and devices
    (``rnorm._check_formula_args``) and that :func:`usable` holds."""
    assert triton is not None
    x = x.contiguous()
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    scal, _ = _scalars(lam_src, lo, hi, eps, alpha)
    y = torch.empty_like(x)
    u = torch.empty(groups, dtype=torch.float32, device=x.device)
    stats = torch.empty(groups, _NSTAT, dtype=torch.float64, device=x.device)
    block = triton.next_power_of_2(p * l_)
    _fwd_kernel[(groups,)](x, w, b, scal, y, u, stats, p, l_, channels, TWO_D=two_d, BAYES=bayes, MODE=mode,
                           HAS_B=bias is not None, BLOCK=block, num_warps=_warps(block))
    return y, u, stats


def backward(x: Tensor, weight: Tensor | None, lam_src: Tensor, stats: Tensor, gy: Tensor, gu: Tensor | None,
             lo: float | None, hi: float, eps: float, alpha: float, bayes: bool, two_d: bool, mode: int, p: int,
             l_: int, need_w: bool, need_b: bool, groups: int, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias, dlam_src) as ``rnorm_backward`` returns them (empty where not asked for)."""
    assert triton is not None
    m = p * l_
    x = x.contiguous()
    gy = gy.contiguous()
    w = weight.contiguous() if weight is not None else x
    gu_c = gu.reshape(-1).contiguous() if (gu is not None and bayes) else x
    scal, dlam = _scalars(lam_src, lo, hi, eps, alpha)
    gx = torch.empty_like(x)
    s1 = torch.empty(groups * m, dtype=torch.float64, device=x.device)
    s2 = torch.empty_like(s1)
    g_l = torch.empty(groups, dtype=torch.float64, device=x.device)
    per = m if mode == 2 else 1
    gw_part = torch.zeros(groups * per if mode else 1, dtype=torch.float64, device=x.device)
    gb_part = torch.zeros_like(gw_part)
    block = triton.next_power_of_2(m)
    _bwd_kernel[(groups,)](x, w, gy, gu_c, stats.contiguous(), scal, gx, s1, s2, g_l, gw_part, gb_part, p, l_,
                           channels, TWO_D=two_d, BAYES=bayes, MODE=mode,
                           HAS_GU=gu is not None and bayes, BLOCK=block, num_warps=_warps(block))
    empty = x.new_empty(0)
    if mode == 1:
        gw = gw_part.reshape(-1, channels).sum(0)
        gb = gb_part.reshape(-1, channels).sum(0)
    else:
        gw = gw_part.reshape(groups, m).sum(0) if mode == 2 else empty
        gb = gb_part.reshape(groups, m).sum(0) if mode == 2 else empty
    g_w = gw.to(torch.float32).reshape(weight.shape) if (weight is not None and need_w) else empty
    g_b = gb.to(torch.float32).reshape(weight.shape) if (weight is not None and need_b) else empty.clone()
    g_lam = (g_l.sum() * dlam).to(torch.float32).reshape(lam_src.shape)
    return gx, g_w, g_b, g_lam


__all__ = ["MAX_M", "available", "backward", "forward", "interpreting", "usable"]

