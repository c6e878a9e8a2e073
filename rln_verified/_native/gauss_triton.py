"""The ReLU moments of a Gaussian as Triton kernels: the CUDA implementation of ``rln_verified::relu_moments_f32``
and ``relu_moments_bwd_f32`` when Triton is installed (the ``triton`` extra).

Elementwise over any number of elements, one program per block of ``BLOCK``. Each float32 input is read exactly into
float64 and goes through the operations of ``gauss.c`` in the same order (RELU-6 (1)): ``phi`` by the Cody-Waite
reduction and the degree-13 Taylor polynomial, times ``2^-k`` built in the exponent bits; ``erfcx`` by the Chebyshev
table of the Faddeeva package in its Horner form (the table is read from ``gauss.c`` itself, so the two cannot
drift); the tail ``a < -4.5`` by the continued fraction and the power-of-two bookkeeping; each output is rounded once
to float32. The forward writes the backward's float64 planes in ``gauss.c``'s layout (``NAUX`` planes of ``n``: the
mean, ``phi(|a|)`` and ``Q(|a|)``), so the backward evaluates no transcendental function. Kernels are launched with
``enable_fp_fusion=False``: every operation is rounded on its own, as ``gauss.c`` is compiled (-ffp-contract=off).

Only ``tl.exp`` (the tail's ``exp(-f)``, ``f`` in ``[0, ln 2)``; libdevice's ``__nv_exp`` on CUDA, the function
torch's float64 CUDA exp calls), ``tl.sqrt`` (the continued fraction's seed, where any positive value converges),
arithmetic, integer bit operations and ``tl.where`` are used: Triton's interpreter (``TRITON_INTERPRET=1``) has no
libdevice, and ``tests/triton_cells.py`` runs these kernels there on CPU tensors. Float64 constants that are not
small integers come from a float64 buffer, since Triton types a Python float as float32.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the triton extra is not installed
    triton = None
    tl = None

#: float64 planes of n values the forward writes for the backward: the mean, phi(|a|), Q(|a|) (gauss.c's layout).
NAUX = 3

#: Elements per program.
BLOCK = 256

_ROWS = 100  # erfcx: 100 Chebyshev rows of 8 float64 (7 coefficients and a 0)
# gauss.c's constants, each the float64 nearest its value (math.sqrt(0.5 * math.pi) is one ulp below sqrt(pi/2))
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_HALF_PI = 1.2533141373155003
_SQRT_HALF = 0.7071067811865476
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split, as gauss.c
_LN2_LO = 1.90821492927058770002e-10
_MAGIC = 1.5 * 2.0**52


def available() -> bool:
    """Triton is importable."""
    return triton is not None


# Triton decides at import, when its decorator runs, whether a kernel is compiled or interpreted; so does this module.
_INTERPRET = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    """Triton runs its interpreter (``TRITON_INTERPRET=1`` when it was imported): the kernels take CPU tensors."""
    return _INTERPRET


def usable(x: Tensor) -> bool:
    """The Triton kernels apply: Triton is here and x is a CUDA tensor (or a CPU one under the interpreter)."""
    return triton is not None and (x.is_cuda or (x.is_cpu and interpreting()))


def erfcx_table() -> list[float]:
    """The 100 x 8 float64 coefficients of ``ERFCX_C`` in ``gauss.c``, row by row, parsed from its source.

    Raises:
        RuntimeError: the table is not found there with 100 rows of 8 numbers."""
    src = Path(__file__).with_name("gauss.c").read_text()
    body = re.search(r"ERFCX_C\[100\]\[8\][^=]*=\s*\{(.*?)\n\};", src, re.S)
    rows = re.findall(r"\{([^{}]*)\}", body.group(1)) if body else []
    vals = [[float(v) for v in row.split(",") if v.strip()] for row in rows]
    if len(vals) != _ROWS or any(len(r) != 8 for r in vals):
        raise RuntimeError("gauss_triton: the ERFCX_C table of gauss.c was not found as 100 rows of 8 numbers")
    return [v for r in vals for v in r]


def _constants_list() -> list[float]:
    """The erfcx table, then (at ``8 * 100``): 1/sqrt(2 pi), sqrt(pi/2), sqrt(1/2), 1/ln2, LN2_HI, LN2_LO, the
    rounding constant 1.5 2^52, inf, NaN, and 1/j! for j = 2..13 (phi's Taylor coefficients)."""
    tail = [_INV_SQRT_2PI, _SQRT_HALF_PI, _SQRT_HALF, _INV_LN2, _LN2_HI, _LN2_LO, _MAGIC, math.inf, math.nan]
    tail += [1.0 / math.factorial(j) for j in range(2, 14)]
    return erfcx_table() + tail


_CONST_CACHE: dict[torch.device, Tensor] = {}


def _constants(device: torch.device) -> Tensor:
    buf = _CONST_CACHE.get(device)
    if buf is None:
        buf = torch.tensor(_constants_list(), dtype=torch.float64, device=device)
        _CONST_CACHE[device] = buf
    return buf


if triton is not None:

    @triton.jit
    def _pow2(e: Any) -> Any:
        # 2^e for an int64 e in [-1022, 1023], from its exponent bits
        return ((e + 1023) << 52).to(tl.float64, bitcast=True)

    @triton.jit
    def _scale_down(v: Any, k: Any) -> Any:
        # v 2^-k for an int64 k >= 0, in three factors 2^-k_i >= 2^-1022: exact while the result is normal (every
        # partial product is then normal too); below 2^-1022 each factor may round once more, a subnormal float64
        # that the float32 outputs round to 0 (RELU-6 (1)). k beyond 3066 leaves any float64 below 2^-2042, i.e. 0.
        k = tl.minimum(k, 3066)
        k1 = tl.minimum(k, 1022)
        k2 = tl.minimum(k - k1, 1022)
        k3 = k - k1 - k2
        return ((v * _pow2(-k1)) * _pow2(-k2)) * _pow2(-k3)

    @triton.jit
    def _phi(y: Any, c: Any) -> Any:
        # phi(y) for 0 <= y <= 40 (NaN stays NaN), as gauss.c's vphi: y^2/2 = k ln2 + r, k the nearest integer,
        # exp(-r) by its Taylor polynomial of degree 13 (Estrin's form for the high part), times 2^-k (0 below 2^-1022)
        base = c + 8 * 100
        inv_sqrt_2pi = tl.load(base)
        inv_ln2 = tl.load(base + 3)
        ln2_hi = tl.load(base + 4)
        ln2_lo = tl.load(base + 5)
        magic = tl.load(base + 6)
        e = (0.5 * y) * y
        kd = (e * inv_ln2 + magic) - magic
        s = kd * ln2_lo - (e - kd * ln2_hi)
        s2 = s * s
        s4 = s2 * s2
        s8 = s4 * s4
        f = base + 9  # 1/j! at f + j - 2
        p01 = tl.load(f) + s * tl.load(f + 1)
        p23 = tl.load(f + 2) + s * tl.load(f + 3)
        p45 = tl.load(f + 4) + s * tl.load(f + 5)
        p67 = tl.load(f + 6) + s * tl.load(f + 7)
        p89 = tl.load(f + 8) + s * tl.load(f + 9)
        p1011 = tl.load(f + 10) + s * tl.load(f + 11)
        q0 = p01 + s2 * p23
        q1 = p45 + s2 * p67
        q2 = p89 + s2 * p1011
        big_p = (q0 + s4 * q1) + s8 * q2
        p = 1.0 + s * (1.0 + s * big_p)
        k = tl.where(kd == kd, kd, 0.0).to(tl.int64)  # an integer-valued float: exact (a NaN lane runs at 0)
        ex = tl.maximum(1023 - k, 0)  # 2^(ex - 1023), or 0 where ex = 0
        return (p * inv_sqrt_2pi) * (ex << 52).to(tl.float64, bitcast=True)

    @triton.jit
    def _erfcx(x: Any, c: Any, live: Any) -> Any:
        # erfcx(x) for 0 <= x <= 50, not NaN: row k of the table at t = 2 y100 - (2k + 1), y100 = 400/(4 + x), in
        # Horner's form; 1 where y100 = 100 (x below 4 eps), as gauss.c
        y100 = 400.0 / (4.0 + x)
        k = tl.minimum(y100.to(tl.int32), 99)  # truncation, y100 >= 0
        t = tl.where(y100 >= 100.0, 3.0, 2.0 * y100 - (2 * k + 1).to(tl.float64))
        row = c + k.to(tl.int64) * 8
        c0 = tl.load(row, mask=live, other=0.0)
        c1 = tl.load(row + 1, mask=live, other=0.0)
        c2 = tl.load(row + 2, mask=live, other=0.0)
        c3 = tl.load(row + 3, mask=live, other=0.0)
        c4 = tl.load(row + 4, mask=live, other=0.0)
        c5 = tl.load(row + 5, mask=live, other=0.0)
        c6 = tl.load(row + 6, mask=live, other=0.0)
        v = c0 + (c1 + (c2 + (c3 + (c4 + (c5 + c6 * t) * t) * t) * t) * t) * t
        return tl.where(t > 2.0, 1.0, v)

    @triton.jit
    def _ratio(mu: Any, sg: Any, inf: Any) -> Any:
        # a = mu/sigma with the sigma = 0 limit: +inf, -inf, or 0 mu (0 or NaN) when mu = 0 (RELU-3)
        lim = tl.where(mu > 0.0, inf, tl.where(mu < 0.0, -inf, 0.0 * mu))
        return tl.where(sg == 0.0, lim, mu / tl.where(sg == 0.0, 1.0, sg))

    @triton.jit
    def _fwd_kernel(mu_ptr: Any, s_ptr: Any, c: Any, mean_ptr: Any, var_ptr: Any, aux_ptr: Any, n: Any,
                    BLOCK: tl.constexpr) -> None:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        base = c + 8 * 100  # the scalar constants after the erfcx table (see _constants)
        inv_sqrt_2pi, sqrt_half_pi, sqrt_half = tl.load(base), tl.load(base + 1), tl.load(base + 2)
        inf, nan = tl.load(base + 7), tl.load(base + 8)
        mu = tl.load(mu_ptr + offs, mask=live, other=0.0).to(tl.float64)
        sg = tl.load(s_ptr + offs, mask=live, other=1.0).to(tl.float64)
        a = _ratio(mu, sg, inf)
        tail = a < -4.5
        # Direct branch, a in [-4.5, 40]; tail lanes see a = 0 (RELU-1, RELU-4 D)
        y = tl.abs(tl.where(tail, 0.0, tl.where(a > 40.0, 40.0, a)))
        pdf = _phi(y, c)
        mills = sqrt_half_pi * _erfcx(tl.where(y == y, y, 0.0) * sqrt_half, c, live)
        q = pdf * mills
        cdf = 1.0 - q
        mean_p = mu * cdf + sg * pdf
        v_pos = ((cdf + ((y * y) * cdf) * q) - (y * pdf) * (cdf - q)) - pdf * pdf
        h1 = pdf * (1.0 - y * mills)
        mean_n = sg * h1
        v_neg = pdf * ((1.0 + y * y) * mills - y) - h1 * h1
        pos = a >= 0.0  # not a tail lane
        mean = tl.where(pos, mean_p, mean_n)
        var = sg * (sg * tl.where(pos, v_pos, v_neg))
        bad = (mu != mu) | (sg != sg) | (sg < 0.0)
        mean = tl.where(bad, nan, mean)
        var = tl.where(bad, nan, var)
        # Tail branch, x = -a > 4.5 (RELU-4 T, F, E); other lanes see x = 4.5
        t_ok = tail & ~bad
        x = tl.where(t_ok, -a, 4.5)
        r = (tl.sqrt(x * x + 4.0 * 33.0) - x) / (2.0 * 33.0)  # the fixed point at depth 33: a positive seed
        r = tl.where(x == inf, 0.0, r)
        r1 = r
        r2 = r
        for j in tl.static_range(32, 0, -1):
            r = 1.0 / (x + j * r)
            if j == 3:
                r2 = r
            if j == 2:
                r1 = r
        r0 = r
        ye = tl.minimum(x, 100.0)
        ee = (0.5 * ye) * ye
        inv_ln2 = tl.load(base + 3)
        ln2_hi = tl.load(base + 4)
        ln2_lo = tl.load(base + 5)
        ne = (ee * inv_ln2).to(tl.int64)  # floor: ee >= 0
        nexp = ne.to(tl.float64)
        fr = (ee - nexp * ln2_hi) - nexp * ln2_lo
        b = tl.exp(-fr) * inv_sqrt_2pi  # in (0.2, 0.4]
        core = (b * r0) * r1
        mean_t = _scale_down(sg * core, ne)
        h1_t = _scale_down(core, ne)
        n1 = ne // 2
        var_t = _scale_down(sg * (core * (2.0 * r2 - h1_t)), n1) * _scale_down(sg, ne - n1)
        pdf_t = tl.where(x > 40.0, 0.0, _scale_down(b, ne))
        mean = tl.where(t_ok, mean_t, mean)
        var = tl.where(t_ok, var_t, var)
        pdf = tl.where(t_ok, pdf_t, pdf)
        q = tl.where(t_ok, pdf_t * r0, q)
        tl.store(aux_ptr + offs, mean, mask=live)
        tl.store(aux_ptr + n + offs, pdf, mask=live)
        tl.store(aux_ptr + 2 * n + offs, q, mask=live)
        tl.store(mean_ptr + offs, mean.to(tl.float32), mask=live)
        tl.store(var_ptr + offs, var.to(tl.float32), mask=live)

    @triton.jit
    def _bwd_kernel(gm_ptr: Any, gv_ptr: Any, mu_ptr: Any, s_ptr: Any, aux_ptr: Any, c: Any, gmu_ptr: Any,
                    gs_ptr: Any, n: Any, BLOCK: tl.constexpr) -> None:
        # RELU-5's partials from the forward's float64 mean, phi(|a|) and Q(|a|), as gauss.c's bwd_block
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        inf = tl.load(c + 8 * 100 + 7)
        mu = tl.load(mu_ptr + offs, mask=live, other=0.0).to(tl.float64)
        sg = tl.load(s_ptr + offs, mask=live, other=1.0).to(tl.float64)
        mean = tl.load(aux_ptr + offs, mask=live, other=0.0)
        pdf = tl.load(aux_ptr + n + offs, mask=live, other=0.0)
        q = tl.load(aux_ptr + 2 * n + offs, mask=live, other=0.0)
        pos = _ratio(mu, sg, inf) >= 0.0
        big = 1.0 - q
        cdf = tl.where(pos, big, q)
        mean_q = mean * tl.where(pos, q, big)
        sig_cdf = sg * cdf
        mean_pdf = mean * pdf
        gm = tl.load(gm_ptr + offs, mask=live, other=0.0).to(tl.float64)
        gv = tl.load(gv_ptr + offs, mask=live, other=0.0).to(tl.float64)
        g_mu = gm * cdf + gv * (2.0 * mean_q)
        g_s = gm * pdf + gv * (2.0 * (sig_cdf - mean_pdf))
        tl.store(gmu_ptr + offs, g_mu.to(tl.float32), mask=live)
        tl.store(gs_ptr + offs, g_s.to(tl.float32), mask=live)


def forward(mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var, aux)`` of relu(N(mu, s^2)) for float32 ``mu``, ``s`` of one shape on one device; ``aux`` holds
    ``NAUX * n`` float64 values for :func:`backward`. The caller has checked dtypes, shapes and devices
    (``gauss._check_formula``) and that :func:`usable` holds."""
    assert triton is not None
    mu = mu.contiguous()
    s = s.contiguous()
    n = mu.numel()
    mean = torch.empty_like(mu)
    var = torch.empty_like(mu)
    aux = torch.empty(NAUX * n, dtype=torch.float64, device=mu.device)
    if n:
        _fwd_kernel[(triton.cdiv(n, BLOCK),)](mu, s, _constants(mu.device), mean, var, aux, n, BLOCK=BLOCK,
                                              num_warps=4, enable_fp_fusion=False)
    return mean, var, aux


def backward(g_mean: Tensor, g_var: Tensor, mu: Tensor, s: Tensor, aux: Tensor) -> tuple[Tensor, Tensor]:
    """``(dL/dmu, dL/ds)`` from ``dL/dmean``, ``dL/dvar`` and the ``aux`` of :func:`forward` (all checked by the
    caller: float32 of mu's shape, ``aux`` ``NAUX * n`` float64, one device)."""
    assert triton is not None
    mu = mu.contiguous()
    n = mu.numel()
    g_mu = torch.empty_like(mu)
    g_s = torch.empty_like(mu)
    if n:
        _bwd_kernel[(triton.cdiv(n, BLOCK),)](g_mean.contiguous(), g_var.contiguous(), mu, s.contiguous(),
                                              aux.contiguous(), _constants(mu.device), g_mu, g_s, n, BLOCK=BLOCK,
                                              num_warps=4, enable_fp_fusion=False)
    return g_mu, g_s


__all__ = ["BLOCK", "NAUX", "available", "backward", "erfcx_table", "forward", "interpreting", "usable"]
