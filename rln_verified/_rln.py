"""R-LayerNorm kernels: forward and closed-form backward (theorems N* in proofs/norm.md).

A *group* is the set of M elements normalized together, viewed here as a (P, L) plane: (H, W) for the 2d
layers (3x3 window) and (R, L) for the last-dims layers (window of 3 along L only, so P is a plain batch
of rows). Everything is computed on centred values, after scaling each group by a power of two so that
no square can overflow (N2); the scaling is exact and eps is scaled with it.

Saved for backward: the input, the affine weight, and per-group scalars only (speed/memory target of
issue 3: no tensor the size of the input beyond the input itself).
"""

from __future__ import annotations

from typing import Any

import torch

from rln_verified._special import psi_and_dpsi


def box(x: torch.Tensor, dim: int) -> torch.Tensor:
    """3-window sum along ``dim`` with reflect padding (x[-1] = x[1], x[n] = x[n-2]); n >= 2."""
    n = x.shape[dim]
    s = x.clone()
    s.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1))
    s.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1))
    s.narrow(dim, 0, 1).add_(x.narrow(dim, 1, 1))
    s.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 2, 1))
    return s


def box_adjoint(z: torch.Tensor, dim: int) -> torch.Tensor:
    """The adjoint of :func:`box`: interior 3-sum, with the two reflected lanes folded onto 1 and n-2."""
    n = z.shape[dim]
    t = z.clone()
    t.narrow(dim, 1, n - 1).add_(z.narrow(dim, 0, n - 1))
    t.narrow(dim, 0, n - 1).add_(z.narrow(dim, 1, n - 1))
    t.narrow(dim, 1, 1).add_(z.narrow(dim, 0, 1))
    t.narrow(dim, n - 2, 1).add_(z.narrow(dim, n - 1, 1))
    return t


def reuse_weights(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """w = box_adjoint(1) / 3: how often reflect padding reuses each position, per window (N0)."""
    return box_adjoint(torch.ones(n, dtype=dtype, device=device), 0) / 3.0


def _windowed(xc: torch.Tensor, two_d: bool) -> torch.Tensor:
    """B x_c: the window means of the centred plane (3 along L; 3x3 when two_d)."""
    b = box(xc, -1)
    if two_d:
        return box(b, -2) / 9.0
    return b / 3.0


def _windowed_adjoint(z: torch.Tensor, two_d: bool) -> torch.Tensor:
    b = box_adjoint(z, -1)
    if two_d:
        return box_adjoint(b, -2) / 9.0
    return b / 3.0


def _group_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-group power of two s <= 1 with max|x s| < 1 (N2). Exact; NaN/inf groups get s = 1."""
    m = x.abs().amax(dim=(-2, -1), keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    e = torch.clamp(e, min=0)
    return torch.ldexp(torch.ones_like(m), -e)


def _stats(xs: torch.Tensor, eps_s: torch.Tensor, two_d: bool) -> tuple[torch.Tensor, ...]:
    """mean, x_c, v, nu, r for the scaled plane ``xs`` (shape (..., P, L)). N0 defines them."""
    p, l_ = xs.shape[-2], xs.shape[-1]
    m = p * l_
    mean = xs.mean(dim=(-2, -1), keepdim=True)
    xc = xs - mean
    sq = xc * xc
    wl = reuse_weights(l_, xs.dtype, xs.device)
    wp = reuse_weights(p, xs.dtype, xs.device) if two_d else torch.ones(p, dtype=xs.dtype, device=xs.device)
    # One pass over sq gives both the plain and the reuse-weighted sums of squares.
    cols = torch.stack((torch.ones_like(wl), wl), dim=-1)  # (L, 2)
    rows = sq @ cols  # (..., P, 2)
    ss = rows[..., 0].sum(-1, keepdim=True).unsqueeze(-1)
    ssw = (rows[..., 1] * wp).sum(-1, keepdim=True).unsqueeze(-1)
    bx = _windowed(xc, two_d)
    sbx = (bx * bx).sum(dim=(-2, -1), keepdim=True)
    v = ss / m
    nu = torch.clamp((ssw - sbx) / m, min=0.0)
    r = nu / (v + eps_s)
    return mean, xc, v, nu, r


def _inflation(t: torch.Tensor, alpha: float, bayes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(t), df/dt / f, and u for t = lambda r. Bayesian: f = exp(alpha psi(t)); plain: f = 1 + t."""
    if bayes:
        p, dp = psi_and_dpsi(t)
        f = torch.exp(alpha * p)
        u = -torch.expm1(-2.0 * alpha * p)
        return f, alpha * dp, u
    f = 1.0 + t
    return f, 1.0 / f, torch.zeros_like(t)


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = _group_scale(x)
        xs = x * s
        eps_s = eps * (s * s)
        mean, xc, v, nu, r = _stats(xs, eps_s, two_d)
        sigma = torch.sqrt(v + eps_s)
        t = lam * r
        f, _, u = _inflation(t, alpha, bayes)
        scale = 1.0 / (sigma * f)
        y = xc * scale
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y, u

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, lam, eps, alpha, bayes, two_d = inputs
        ctx.eps, ctx.alpha, ctx.bayes, ctx.two_d = eps, alpha, bayes, two_d
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.save_for_backward(x, weight, lam)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, gu: torch.Tensor | None) -> tuple[Any, ...]:
        x, weight, lam = ctx.saved_tensors
        two_d, bayes, alpha = ctx.two_d, ctx.bayes, ctx.alpha
        p, l_ = x.shape[-2], x.shape[-1]
        m = p * l_
        s = _group_scale(x)
        xs = x * s
        eps_s = ctx.eps * (s * s)
        mean, xc, v, nu, r = _stats(xs, eps_s, two_d)
        var_eps = v + eps_s
        sigma = torch.sqrt(var_eps)
        t = lam * r
        f, dlogf, u = _inflation(t, alpha, bayes)
        xh = xc / sigma
        gg = gy * weight if weight is not None else gy
        a_sum = (gg * xh).sum(dim=(-2, -1), keepdim=True)
        # dL/dt through y (y depends on t through 1/f) and through u.
        g_t = -a_sum * dlogf / f
        if bayes and gu is not None:
            g_t = g_t + gu * 2.0 * dlogf * (1.0 - u)
        g_r = g_t * lam
        # LayerNorm part, scaled domain: (1/(sigma f)) (q - mean q - xh mean(q xh)), q = gg.
        q_mean = gg.mean(dim=(-2, -1), keepdim=True)
        gx = (gg - q_mean - xh * (a_sum / m)) / (sigma * f)
        # r part: grad_xs r = (2/M)[P(w x_c - B^T B x_c)]/(v+eps) - r (2/M) x_c/(v+eps) (N3 proof).
        wl = reuse_weights(l_, xs.dtype, xs.device)
        wxc = xc * wl
        if two_d:
            wxc = wxc * reuse_weights(p, xs.dtype, xs.device).unsqueeze(-1)
        dnu = wxc - _windowed_adjoint(_windowed(xc, two_d), two_d)
        dnu = dnu - dnu.mean(dim=(-2, -1), keepdim=True)
        coef = g_r * (2.0 / m) / var_eps
        gx = gx + coef * (dnu - r * xc)
        gx = gx * s  # xs = x s with s piecewise constant
        g_lam = (g_t * r).sum().reshape(lam.shape) if ctx.needs_input_grad[3] else None
        g_w = None
        if ctx.has_weight and ctx.needs_input_grad[1]:
            g_w = _reduce_to(gy * (xh / f), weight.shape)
        g_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = _reduce_to(gy, ctx.bias_shape)
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
    """Apply the kernel to ``x`` of shape (..., P, L); weight and bias broadcast against it."""
    out: tuple[torch.Tensor, torch.Tensor] = _RNormFn.apply(  # type: ignore[no-untyped-call]
        x, weight, bias, lam, eps, alpha, bayes, two_d
    )
    return out


__all__ = ["box", "box_adjoint", "reuse_weights", "rnorm_planes"]

