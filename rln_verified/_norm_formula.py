"""The R-LayerNorm formula in plain torch operations (theorems N0..N10, proofs/norm.md).

A *group* is the set of M elements normalized together, viewed as a (P, L) plane: (H, W) for the 2d
layers (3x3 window) and (R, L) for the last-dims layers (window of 3 along L only, so the P rows are
independent). Everything is computed on centred values, after scaling each group by a power of two so
that no square or sum can overflow (N2); the scaling is exact and eps is scaled with it.

The helpers here serve the eager kernel (``_norm.py``); :func:`plain_planes` is the whole formula with no custom
autograd node, differentiable to every order, for ``torch.func`` transforms and for backward passes that build a
graph (``create_graph=True``).
"""

from __future__ import annotations

import math

import torch

from rln_verified._special import psi_and_dpsi, psi_plain


def _zero_padded_sum_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """t_i = x_{i-1} + x_i + x_{i+1} with zeros outside [0, n): one copy and two in-place adds, no padding."""
    n = x.shape[dim]
    t = x.clone()
    t.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1))
    t.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1))
    return t


def _box_sum_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Window-of-3 sums along ``dim`` with reflect padding (x[-1] = x[1], x[n] = x[n-2]); n >= 2.

    The zero-padded sum plus the reflected lanes: position 0 gains x[1], position n-1 gains x[n-2].
    """
    n = x.shape[dim]
    t = _zero_padded_sum_1d(x, dim)
    t.narrow(dim, 0, 1).add_(x.narrow(dim, 1, 1))
    t.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 2, 1))
    return t


def _box_sum_adjoint_1d(z: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of :func:`_box_sum_1d`: the zero-padded 3-sum with the reflected lanes folded onto 1, n-2."""
    n = z.shape[dim]
    t = _zero_padded_sum_1d(z, dim)
    # Position 0's window holds x[1] twice and position n-1's holds x[n-2] twice.
    t.narrow(dim, 1, 1).add_(z.narrow(dim, 0, 1))
    t.narrow(dim, n - 2, 1).add_(z.narrow(dim, n - 1, 1))
    return t


def box_sum(x: torch.Tensor, two_d: bool) -> torch.Tensor:
    """Window sums of the (..., P, L) planes: 3 along L, or 3x3 when ``two_d`` (reflect padding)."""
    b = _box_sum_1d(x, -1)
    return _box_sum_1d(b, -2) if two_d else b


def box_sum_adjoint(z: torch.Tensor, two_d: bool) -> torch.Tensor:
    b = _box_sum_adjoint_1d(z, -1)
    return _box_sum_adjoint_1d(b, -2) if two_d else b


def reuse_weights(n: int) -> list[float]:
    """w_j = (number of windows that contain j, with multiplicity) / 3 for a reflect-padded axis (N0)."""
    if n == 2:
        return [1.0, 1.0]
    if n == 3:
        return [2 / 3, 5 / 3, 2 / 3]
    return [2 / 3, 4 / 3] + [1.0] * (n - 4) + [4 / 3, 2 / 3]


def _edges(n: int) -> list[tuple[int, float]]:
    """Positions where the reuse weight differs from 1, with w - 1."""
    return [(i, w - 1.0) for i, w in enumerate(reuse_weights(n)) if w != 1.0]


def _weighted_sq_sum(xc: torch.Tensor, ss: torch.Tensor, two_d: bool) -> torch.Tensor:
    """sum_j w_j x_c_j^2 = sum x_c^2 + corrections on the edge rows/columns (static indices, no sync)."""
    p, l_ = xc.shape[-2], xc.shape[-1]
    out = ss
    for j, d in _edges(l_):
        col = xc.narrow(-1, j, 1)
        out = out + d * (col * col).sum(dim=(-2, -1), keepdim=True)
    if two_d:
        wl = torch.tensor(reuse_weights(l_), dtype=xc.dtype, device=xc.device)
        for i, d in _edges(p):
            row = xc.narrow(-2, i, 1)
            out = out + d * (row * row * wl).sum(dim=(-2, -1), keepdim=True)
    return out


def add_edge_term(gx: torch.Tensor, xc: torch.Tensor, k: torch.Tensor, two_d: bool) -> None:
    """gx += k * (w - 1) * x_c, in place, touching only the edge rows/columns."""
    p, l_ = xc.shape[-2], xc.shape[-1]
    if two_d:
        wl = torch.tensor(reuse_weights(l_), dtype=xc.dtype, device=xc.device)
        wp = reuse_weights(p)
        for i, _ in _edges(p):
            # Full row i: (wp_i wl_l - 1); the column edges in this row are handled here too.
            gx.narrow(-2, i, 1).add_(xc.narrow(-2, i, 1) * (wp[i] * wl - 1.0) * k)
        rows = [i for i in range(p) if wp[i] == 1.0]
        if rows:
            lo, hi = rows[0], rows[-1] + 1  # the rows with weight 1 form one contiguous block
            for j, d in _edges(l_):
                gx.narrow(-2, lo, hi - lo).narrow(-1, j, 1).add_(xc.narrow(-2, lo, hi - lo).narrow(-1, j, 1) * (d * k))
    else:
        for j, d in _edges(l_):
            gx.narrow(-1, j, 1).add_(xc.narrow(-1, j, 1) * (d * k))


def group_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-group power of two s <= 1 with max|x s| < 1 (N2). Exact; NaN/inf groups get s = 1."""
    # max|x| as max(amax, -amin): two cheap reductions instead of a full-size abs() temporary.
    m = torch.maximum(x.amax(dim=(-2, -1), keepdim=True), -x.amin(dim=(-2, -1), keepdim=True))
    m = torch.where(torch.isfinite(m), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    return torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=0))


def group_scale_no_frexp(x: torch.Tensor) -> torch.Tensor:
    """A power of two s <= 1 with max|x s| < 2 from log2 instead of frexp, for exporters that have no frexp (ONNX).
    log2 may round across a power of two, so the exponent can be one too large or too small: s is still a power of
    two, so the scaling stays exact, and max|x s| < 2 keeps N2's overflow margin (sums of M squares below 4M)."""
    m = torch.maximum(x.amax(dim=(-2, -1), keepdim=True), -x.amin(dim=(-2, -1), keepdim=True))
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    e = torch.clamp(torch.floor(torch.log2(m)) + 1.0, min=0.0)
    return torch.pow(2.0, -e)


def inflation(t: torch.Tensor, alpha: float, bayes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(t), (df/dt)/f and u, for t = lambda r. Bayesian: f = exp(alpha psi(t)); plain: f = 1 + t."""
    if bayes:
        p, dp = psi_and_dpsi(t)
        return torch.exp(alpha * p), alpha * dp, -torch.expm1(-2.0 * alpha * p)
    f = 1.0 + t
    return f, 1.0 / f, torch.zeros_like(t)


def _centre(x: torch.Tensor, no_frexp: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled, centred values. One refinement step makes the mean exact for constant groups (N2):
    x s - mean is then a small exactly representable residue whose mean is computed exactly."""
    s = group_scale_no_frexp(x) if no_frexp else group_scale(x)
    xs = x * s
    mean = xs.mean(dim=(-2, -1), keepdim=True)
    mean = mean + (xs - mean).mean(dim=(-2, -1), keepdim=True)
    return xs - mean, mean, s


def _scaled_eps(eps: float, s: torch.Tensor) -> torch.Tensor:
    """eps s^2, kept >= the smallest normal float so that a zero-variance group divides by a positive number.
    Where eps s^2 underflows, v + eps s^2 and v + tiny agree to within rounding unless v = 0 (N2)."""
    return torch.clamp(eps * (s * s), min=float(torch.finfo(s.dtype).tiny))


def unscaled_inverse(a: torch.Tensor, s: torch.Tensor, v: torch.Tensor, f: torch.Tensor, eps: float) -> torch.Tensor:
    """1/(sigma f) of the unscaled group, a s with a = 1/(sigma_s f) of the scaled one, except at v = 0 (a constant
    group, or one whose variance is below the smallest normal), where it is 1/(sqrt(eps) f) exactly. Where eps s^2
    underflows (float64 groups above ~2^503), a s would be s/sqrt(tiny) instead (N2, N3)."""
    return torch.where(v == 0, 1.0 / (math.sqrt(eps) * f), a * s)


def norm_const(two_d: bool) -> float:
    """B = box_sum / c with c = 9 (3x3) or 3 (width 3)."""
    return 9.0 if two_d else 3.0


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-group scalars are kept in float64 when the plane is float32: eps s^2 and 1/sigma of a huge constant
    group (s = 2^-128) are representable there, so the gradient of such a group stays 1/sqrt(eps) (N2, N3)."""
    return torch.float64 if dtype == torch.float32 else dtype


def group_stats(x: torch.Tensor, eps: float, two_d: bool, no_frexp: bool = False) -> dict[str, torch.Tensor]:
    """The per-group quantities of N0 (mean, v, nu, r, s) for planes ``x`` of shape (..., P, L).

    ``xc`` and ``mean`` are in x's dtype; the per-group scalars ``s, v, nu, r, eps_s`` in :func:`stat_dtype`.
    ``no_frexp``: the scale from :func:`group_scale_no_frexp` (for ONNX export)."""
    xc, mean, s = _centre(x, no_frexp)
    m = x.shape[-2] * x.shape[-1]
    c = norm_const(two_d)
    sd = stat_dtype(x.dtype)
    ss = torch.linalg.vector_norm(xc, dim=(-2, -1), keepdim=True) ** 2
    ssw = _weighted_sq_sum(xc, ss, two_d).to(sd)
    sbx = (torch.linalg.vector_norm(box_sum(xc, two_d), dim=(-2, -1), keepdim=True).to(sd) / c) ** 2
    ss = ss.to(sd)
    s_d = s.to(sd)
    eps_s = _scaled_eps(eps, s_d)
    v = ss / m
    nu = torch.clamp((ssw - sbx) / m, min=0.0)
    return {"xc": xc, "mean": mean, "s": s_d, "v": v, "nu": nu, "r": nu / (v + eps_s), "eps_s": eps_s}


def saturating_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a per-group factor to the plane's dtype, saturating instead of overflowing (a factor that large only
    multiplies x_c = 0, a constant group)."""
    if t.dtype == dtype:
        return t
    big = float(torch.finfo(dtype).max)
    return torch.clamp(t, min=-big, max=big).to(dtype)


def plane_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over the (P, L) plane of a * b, keepdim, without a full-size product temporary."""
    d: torch.Tensor = torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))
    return d.unsqueeze(-1).unsqueeze(-1)


def reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (right-aligned broadcasting)."""
    lead = g.ndim - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1]
    out = g.sum(dim=dims, keepdim=True) if dims else g
    return out.reshape(shape)


def lambda_of(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """lambda = lo + (hi - lo)(1 + sin raw)/2: inside [lo, hi] for every raw, derivative never 0 at a float (N8)."""
    return lo + (hi - lo) * 0.5 * (1.0 + torch.sin(raw))


def raw_of(lam: float, lo: float, hi: float) -> float:
    return math.asin(2.0 * (lam - lo) / (hi - lo) - 1.0)



def plain_planes(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lam: torch.Tensor,
    eps: float,
    alpha: float,
    bayes: bool,
    two_d: bool,
    no_frexp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, u)`` for planes ``x`` of shape (..., P, L), u keepdim: the formula of N0 in plain torch operations.

    The same values as the eager and fused kernels up to rounding (float32 planes keep their per-group sums in
    float64, as N11's kernel does); no custom autograd node, so ``torch.func`` transforms and double backward see
    ordinary operations. The power-of-two scale ``s`` (N2) is piecewise constant and carries no gradient; y is
    invariant to it. ``weight`` and ``bias`` broadcast against the planes (per channel as (C, 1, 1), or per element).
    ``no_frexp``: take s from :func:`group_scale_no_frexp` (ONNX has no frexp).
    """
    cd = x.dtype
    sd = stat_dtype(cd)
    p, l_ = x.shape[-2], x.shape[-1]
    m = p * l_
    c = norm_const(two_d)
    s = group_scale_no_frexp(x.detach()) if no_frexp else group_scale(x.detach())
    xs = x * s
    mean = xs.mean(dim=(-2, -1), keepdim=True)
    mean = mean + (xs - mean).mean(dim=(-2, -1), keepdim=True)
    xc = (xs - mean).to(sd)
    wl = torch.tensor(reuse_weights(l_), dtype=sd, device=x.device)
    wp = torch.tensor(reuse_weights(p) if two_d else [1.0] * p, dtype=sd, device=x.device)
    sq = xc * xc
    v = sq.sum(dim=(-2, -1), keepdim=True) / m
    ssw = (sq * (wp.unsqueeze(-1) * wl)).sum(dim=(-2, -1), keepdim=True)
    bx = box_sum(xc, two_d) / c
    sbx = (bx * bx).sum(dim=(-2, -1), keepdim=True)
    nu = torch.clamp((ssw - sbx) / m, min=0.0)
    var_eps = v + _scaled_eps(eps, s.to(sd))
    r = nu / var_eps
    t = lam.to(sd) * r
    if bayes:
        ps = psi_plain(t)
        f = torch.exp(alpha * ps)
        u = -torch.expm1(-2.0 * alpha * ps)
    else:
        f = 1.0 + t
        u = torch.zeros_like(t)
    y = xc * (1.0 / (torch.sqrt(var_eps) * f))
    # A group with v = 0 has x_c = 0: y does not change, but autograd's dy/dx = s/(sigma_s f) P is wrong where eps s^2
    # underflowed (see unscaled_inverse). There the centring is redone unscaled, x - x_0 (exactly 0), so that
    # dy/dx = P/(sqrt(eps) f) at every magnitude; elsewhere the masked difference carries no value and no gradient.
    flat = v == 0
    x0 = x.detach()[..., :1, :1]
    d = torch.where(flat, x - x0, torch.zeros_like(x))
    d = (d - d.mean(dim=(-2, -1), keepdim=True)).to(sd)
    y = torch.where(flat, d * (1.0 / (math.sqrt(eps) * f)), y)
    if weight is not None:
        y = y * weight.to(sd)
    if bias is not None:
        y = y + bias.to(sd)
    return y.to(cd), u.to(cd)
