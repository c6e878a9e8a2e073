"""R-LayerNorm kernels: forward and closed-form backward (theorems N* in proofs/norm.md).

A *group* is the set of M elements normalized together, viewed as a (P, L) plane: (H, W) for the 2d
layers (3x3 window) and (R, L) for the last-dims layers (window of 3 along L only, so the P rows are
independent). Everything is computed on centred values, after scaling each group by a power of two so
that no square or sum can overflow (N2); the scaling is exact and eps is scaled with it.

Saved for backward: the input, the affine weight, and per-group scalars only (issue 3's memory target:
no tensor the size of the input beyond the input itself). The backward recomputes x_c and B x_c.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rln_verified._special import psi_and_dpsi


def _box_sum_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Window-of-3 sums along ``dim`` with reflect padding (x[-1] = x[1], x[n] = x[n-2]); n >= 2."""
    n = x.shape[dim]
    first = x.narrow(dim, 0, 1) + 2.0 * x.narrow(dim, 1, 1)
    last = x.narrow(dim, n - 1, 1) + 2.0 * x.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat((first, last), dim)
    inner = x.narrow(dim, 0, n - 2) + x.narrow(dim, 1, n - 2)
    inner = inner + x.narrow(dim, 2, n - 2)
    return torch.cat((first, inner, last), dim)


def _box_sum_adjoint_1d(z: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of :func:`_box_sum_1d`: the zero-padded 3-sum with the reflected lanes folded onto 1, n-2."""
    n = z.shape[dim]
    pad = [0, 0] * (z.ndim - 1 - (dim % z.ndim)) + [1, 1]
    zp = F.pad(z, pad)  # zeros at -1 and n
    t = zp.narrow(dim, 0, n) + zp.narrow(dim, 1, n)
    t = t + zp.narrow(dim, 2, n)
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


def _add_edge_term(gx: torch.Tensor, xc: torch.Tensor, k: torch.Tensor, two_d: bool) -> None:
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
                gx.narrow(-2, lo, hi - lo).narrow(-1, j, 1).add_(
                    xc.narrow(-2, lo, hi - lo).narrow(-1, j, 1) * (d * k)
                )
    else:
        for j, d in _edges(l_):
            gx.narrow(-1, j, 1).add_(xc.narrow(-1, j, 1) * (d * k))


def _group_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-group power of two s <= 1 with max|x s| < 1 (N2). Exact; NaN/inf groups get s = 1."""
    m = x.abs().amax(dim=(-2, -1), keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    return torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=0))


def _inflation(t: torch.Tensor, alpha: float, bayes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(t), (df/dt)/f and u, for t = lambda r. Bayesian: f = exp(alpha psi(t)); plain: f = 1 + t."""
    if bayes:
        p, dp = psi_and_dpsi(t)
        return torch.exp(alpha * p), alpha * dp, -torch.expm1(-2.0 * alpha * p)
    f = 1.0 + t
    return f, 1.0 / f, torch.zeros_like(t)


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled, centred values. One refinement step makes the mean exact for constant groups (N2):
    x s - mean is then a small exactly representable residue whose mean is computed exactly."""
    s = _group_scale(x)
    xs = x * s
    mean = xs.mean(dim=(-2, -1), keepdim=True)
    mean = mean + (xs - mean).mean(dim=(-2, -1), keepdim=True)
    return xs - mean, mean, s


def _scaled_eps(eps: float, s: torch.Tensor) -> torch.Tensor:
    """eps s^2, kept >= the smallest normal float so that a zero-variance group divides by a positive number.
    Where eps s^2 underflows, v + eps s^2 and v + tiny agree to within rounding unless v = 0 (N2)."""
    return torch.clamp(eps * (s * s), min=float(torch.finfo(s.dtype).tiny))


def _norm_consts(two_d: bool) -> float:
    """B = box_sum / c with c = 9 (3x3) or 3 (width 3)."""
    return 9.0 if two_d else 3.0


def group_stats(x: torch.Tensor, eps: float, two_d: bool) -> dict[str, torch.Tensor]:
    """The per-group quantities of N0 (mean, v, nu, r, s) for planes ``x`` of shape (..., P, L)."""
    xc, mean, s = _centre(x)
    m = x.shape[-2] * x.shape[-1]
    c = _norm_consts(two_d)
    ss = torch.linalg.vector_norm(xc, dim=(-2, -1), keepdim=True) ** 2
    ssw = _weighted_sq_sum(xc, ss, two_d)
    sbx = (torch.linalg.vector_norm(box_sum(xc, two_d), dim=(-2, -1), keepdim=True) / c) ** 2
    eps_s = _scaled_eps(eps, s)
    v = ss / m
    nu = torch.clamp((ssw - sbx) / m, min=0.0)
    return {"xc": xc, "mean": mean, "s": s, "v": v, "nu": nu, "r": nu / (v + eps_s), "eps_s": eps_s}


class _RNormFn(torch.autograd.Function):
    """y = w * x_c / (sigma f(lambda r)) + b on (..., P, L) planes; also returns u (keepdim)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        lam: torch.Tensor,
        eps: float,
        alpha: float,
        bayes: bool,
        two_d: bool,
    ) -> tuple[torch.Tensor, ...]:
        st = group_stats(x, eps, two_d)
        sigma = torch.sqrt(st["v"] + st["eps_s"])
        f, dlogf, u = _inflation(lam * st["r"], alpha, bayes)
        a = 1.0 / (sigma * f)
        if weight is not None and weight.shape[-2:] == (1, 1):
            y = st["xc"] * (a * weight)  # per-channel weight folds into the per-group scalar
        else:
            y = st["xc"] * a
            if weight is not None:
                y = y * weight
        if bias is not None:
            y = y + bias
        return y, u, st["mean"], st["s"], sigma, st["r"], f, dlogf

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, lam, eps, alpha, bayes, two_d = inputs
        _, u, mean, s, sigma, r, f, dlogf = output
        ctx.eps, ctx.alpha, ctx.bayes, ctx.two_d = eps, alpha, bayes, two_d
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.save_for_backward(x, weight, lam, mean, s, sigma, r, f, dlogf, u)
        ctx.mark_non_differentiable(mean, s, sigma, r, f, dlogf)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, gu: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        x, weight, lam, mean, s, sigma, r, f, dlogf, u = ctx.saved_tensors
        two_d, bayes = ctx.two_d, ctx.bayes
        p, l_ = x.shape[-2], x.shape[-1]
        m = p * l_
        c = _norm_consts(two_d)
        xc = x * s - mean
        var_eps = sigma * sigma
        a = 1.0 / (sigma * f)
        per_channel = weight is not None and weight.shape[-2:] == (1, 1)
        gyxc = (gy * xc).sum(dim=(-2, -1), keepdim=True) if weight is None or per_channel else gy
        if weight is None:
            gg_sum = gy.sum(dim=(-2, -1), keepdim=True)
            a_sum = gyxc / sigma
        elif per_channel:
            gy_sum = gy.sum(dim=(-2, -1), keepdim=True)
            gg_sum = gy_sum * weight
            a_sum = gyxc * weight / sigma
        else:
            gg = gy * weight
            gg_sum = gg.sum(dim=(-2, -1), keepdim=True)
            a_sum = (gg * xc).sum(dim=(-2, -1), keepdim=True) / sigma
        # dL/dt, t = lambda r: through y (1/f) and through u.
        g_t = -a_sum * dlogf / f
        if bayes and gu is not None:
            g_t = g_t + gu * 2.0 * dlogf * (1.0 - u)
        coef = (g_t * lam) * (2.0 / m) / var_eps
        # gx/s = gg a - a mean(gg) - xh a mean(gg xh) + coef [w x_c - B^T B x_c - r x_c]  (proofs/norm.md, N3)
        k_xc = -(a_sum / m) * a / sigma + coef * (1.0 - r)
        k_0 = -(gg_sum / m) * a
        btb = box_sum_adjoint(box_sum(xc, two_d), two_d)
        if weight is None:
            gx = gy * (a * s)
        elif per_channel:
            gx = gy * (a * weight * s)
        else:
            gx = gg * (a * s)
        gx = gx + xc * (k_xc * s)
        gx = gx + btb * (-(coef * s) / (c * c))
        gx = gx + k_0 * s
        _add_edge_term(gx, xc, coef * s, two_d)
        g_lam = (g_t * r).sum().reshape(lam.shape) if ctx.needs_input_grad[3] else None
        g_w = None
        if weight is not None and ctx.needs_input_grad[1]:
            per_elem = gyxc * a if per_channel and gyxc is not None else gy * xc * a
            g_w = _reduce_to(per_elem, weight.shape)
        g_b = _reduce_to(gy, ctx.bias_shape) if ctx.bias_shape is not None and ctx.needs_input_grad[2] else None
        return gx, g_w, g_b, g_lam, None, None, None, None


def _reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (right-aligned broadcasting)."""
    lead = g.ndim - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1]
    out = g.sum(dim=dims, keepdim=True) if dims else g
    return out.reshape(shape)


def rnorm_planes(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lam: torch.Tensor,
    eps: float,
    alpha: float,
    bayes: bool,
    two_d: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the kernel to ``x`` of shape (..., P, L); weight and bias broadcast against it.

    A weight of shape (..., 1, 1) is per group (per channel); any other shape is elementwise.
    """
    out = _RNormFn.apply(x, weight, bias, lam, eps, alpha, bayes, two_d)  # type: ignore[no-untyped-call]
    return out[0], out[1]


__all__ = ["box_sum", "box_sum_adjoint", "group_stats", "reuse_weights", "rnorm_planes"]
