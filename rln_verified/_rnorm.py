"""R-LayerNorm kernels and functional forms: forward and closed-form backward (theorems N0..N10, proofs/norm.md).

A *group* is the set of M elements normalized together, viewed as a (P, L) plane: (H, W) for the 2d
layers (3x3 window) and (R, L) for the last-dims layers (window of 3 along L only, so the P rows are
independent). Everything is computed on centred values, after scaling each group by a power of two so
that no square or sum can overflow (N2); the scaling is exact and eps is scaled with it.

Saved for backward: the input, the affine weight, and per-group scalars only (issue 3's memory target:
no tensor the size of the input beyond the input itself). The backward recomputes x_c and B x_c.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from rln_verified import _native
from rln_verified._special import psi_and_dpsi
from rln_verified._validation import compute_dtype

_Shape = int | Sequence[int] | torch.Size


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
                gx.narrow(-2, lo, hi - lo).narrow(-1, j, 1).add_(xc.narrow(-2, lo, hi - lo).narrow(-1, j, 1) * (d * k))
    else:
        for j, d in _edges(l_):
            gx.narrow(-1, j, 1).add_(xc.narrow(-1, j, 1) * (d * k))


def _group_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-group power of two s <= 1 with max|x s| < 1 (N2). Exact; NaN/inf groups get s = 1."""
    # max|x| as max(amax, -amin): two cheap reductions instead of a full-size abs() temporary.
    m = torch.maximum(x.amax(dim=(-2, -1), keepdim=True), -x.amin(dim=(-2, -1), keepdim=True))
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


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-group scalars are kept in float64 when the plane is float32: eps s^2 and 1/sigma of a huge constant
    group (s = 2^-128) are representable there, so the gradient of such a group stays 1/sqrt(eps) (N2, N3)."""
    return torch.float64 if dtype == torch.float32 else dtype


def group_stats(x: torch.Tensor, eps: float, two_d: bool) -> dict[str, torch.Tensor]:
    """The per-group quantities of N0 (mean, v, nu, r, s) for planes ``x`` of shape (..., P, L).

    ``xc`` and ``mean`` are in x's dtype; the per-group scalars ``s, v, nu, r, eps_s`` in :func:`stat_dtype`."""
    xc, mean, s = _centre(x)
    m = x.shape[-2] * x.shape[-1]
    c = _norm_consts(two_d)
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


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a per-group factor to the plane's dtype, saturating instead of overflowing (a factor that large only
    multiplies x_c = 0, a constant group)."""
    if t.dtype == dtype:
        return t
    big = float(torch.finfo(dtype).max)
    return torch.clamp(t, min=-big, max=big).to(dtype)


def _plane_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over the (P, L) plane of a * b, keepdim, without a full-size product temporary."""
    d: torch.Tensor = torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))
    return d.unsqueeze(-1).unsqueeze(-1)


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
        sd, cd = st["v"].dtype, x.dtype
        sigma = torch.sqrt(st["v"] + st["eps_s"])
        f, dlogf, u = _inflation(lam.to(sd) * st["r"], alpha, bayes)
        a = 1.0 / (sigma * f)
        if weight is not None and weight.shape[-2:] == (1, 1):
            # per-channel weight folds into the per-group scalar
            scale, xcs = _to(a * weight.to(sd), cd), st["xc"]
        elif weight is not None:
            scale, xcs = weight, st["xc"] * _to(a, cd)
        else:
            scale, xcs = _to(a, cd), st["xc"]
        # x_c * scale + bias: torch.addcmul with a broadcast bias measured 2.5x slower than these two passes.
        y = xcs * scale
        if bias is not None:
            y = y + bias
        # The user-facing u and the saved one must be distinct tensors (the saved one is non-differentiable).
        u_out = u.to(cd) if u.dtype != cd else u.clone()
        return y, u_out, st["mean"], st["s"], sigma, st["r"], f, dlogf, u

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, lam, eps, alpha, bayes, two_d = inputs
        _, _, mean, s, sigma, r, f, dlogf, u = output
        ctx.eps, ctx.alpha, ctx.bayes, ctx.two_d = eps, alpha, bayes, two_d
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.lam_dtype = lam.dtype
        ctx.save_for_backward(x, weight, lam, mean, s, sigma, r, f, dlogf, u)
        ctx.mark_non_differentiable(mean, s, sigma, r, f, dlogf, u)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, gu: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        x, weight, lam, mean, s, sigma, r, f, dlogf, u = ctx.saved_tensors
        two_d, bayes = ctx.two_d, ctx.bayes
        p, l_ = x.shape[-2], x.shape[-1]
        m = p * l_
        c = _norm_consts(two_d)
        cd, sd = x.dtype, sigma.dtype
        xc = x * s.to(cd) - mean  # (torch.addcmul with a broadcast self measured 2.5x slower here)
        var_eps = sigma * sigma
        a = 1.0 / (sigma * f)
        per_channel = weight is not None and weight.shape[-2:] == (1, 1)
        w_sd = weight.to(sd) if per_channel and weight is not None else None
        gyxc = _plane_dot(gy, xc).to(sd) if weight is None or per_channel else gy
        if weight is None:
            gg_sum = gy.sum(dim=(-2, -1), keepdim=True).to(sd)
            a_sum = gyxc / sigma
        elif w_sd is not None:
            gy_sum = gy.sum(dim=(-2, -1), keepdim=True).to(sd)
            gg_sum = gy_sum * w_sd
            a_sum = gyxc * w_sd / sigma
        else:
            gg = gy * weight
            gg_sum = gg.sum(dim=(-2, -1), keepdim=True).to(sd)
            a_sum = _plane_dot(gg, xc).to(sd) / sigma
        lam = lam.to(sd)
        if gu is not None:
            gu = gu.to(sd)
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
            gx = gy * _to(a * s, cd)
        elif w_sd is not None:
            gx = gy * _to(a * w_sd * s, cd)
        else:
            gx = gg * _to(a * s, cd)
        gx.addcmul_(xc, _to(k_xc * s, cd))
        gx.addcmul_(btb, _to(-(coef * s) / (c * c), cd))
        gx.add_(_to(k_0 * s, cd))
        _add_edge_term(gx, xc, _to(coef * s, cd), two_d)
        g_lam = (g_t * r).sum().reshape(lam.shape).to(ctx.lam_dtype) if ctx.needs_input_grad[3] else None
        g_w = None
        if weight is not None and ctx.needs_input_grad[1]:
            per_elem = (gyxc * a).to(cd) if w_sd is not None else gy * xc * _to(a, cd)
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
    float32 CPU inputs go through the fused kernel of ``_native`` when it is available (same formula, N11).
    """
    mode = 0 if weight is None else (1 if tuple(weight.shape[-2:]) == (1, 1) else 2)
    p, l_ = x.shape[-2], x.shape[-1]
    if _native.usable(x, weight, bias, lam, mode, p, l_):
        return _native.apply(x, weight, bias, lam, None, 0.0, eps, alpha, bayes, two_d, mode, p, l_,
                             (*tuple(x.shape[:-2]), 1, 1))
    out = _RNormFn.apply(x, weight, bias, lam, eps, alpha, bayes, two_d)  # type: ignore[no-untyped-call]
    return out[0], out[1]


# ---- configuration and input checks (no tensor data is read: no host sync) ----------------------------


def _lambda_of(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """lambda = lo + (hi - lo)(1 + sin raw)/2: inside [lo, hi] for every raw, derivative never 0 at a float (N8)."""
    return lo + (hi - lo) * 0.5 * (1.0 + torch.sin(raw))


def _raw_of(lam: float, lo: float, hi: float) -> float:
    return math.asin(2.0 * (lam - lo) / (hi - lo) - 1.0)


def _check_config(eps: float, alpha: float, lambda_init: float, lambda_min: float, lambda_max: float) -> None:
    for name, v in (
        ("eps", eps),
        ("alpha", alpha),
        ("lambda_init", lambda_init),
        ("lambda_min", lambda_min),
        ("lambda_max", lambda_max),
    ):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if not 0 <= lambda_min < lambda_max:
        raise ValueError(
            f"lambda bounds must satisfy 0 <= lambda_min < lambda_max, got [{lambda_min!r}, {lambda_max!r}]"
        )
    if not lambda_min < lambda_init < lambda_max:
        raise ValueError(
            f"lambda_init must lie in the open interval ({lambda_min!r}, {lambda_max!r}), got {lambda_init!r}"
        )


def _as_shape(normalized_shape: _Shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(n) for n in normalized_shape)


def _check_input(x: object, layer: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer}: expected a floating-point input (float64, float32, float16, bfloat16), got {x.dtype}"
        )
    return x


# ---- functional forms (the modules call the same kernel) ------------------------------------------


def _lambda_tensor(lambda_: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(lambda_, torch.Tensor):
        return lambda_
    if not 0 < float(lambda_) < math.inf:
        raise ValueError(f"lambda_ must be a positive finite number, got {lambda_!r}")
    return torch.tensor(float(lambda_), dtype=like.dtype, device=like.device)


def _functional_last_dims(
    x: torch.Tensor,
    normalized_shape: _Shape,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lambda_: float | torch.Tensor,
    alpha: float,
    eps: float,
    bayes: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    ns = _as_shape(normalized_shape)
    name = "bayesian_r_layer_norm" if bayes else "r_layer_norm"
    x = _check_input(x, name)
    _check_config(eps, alpha, 0.5, 0.0, 1.0)
    k = len(ns)
    if x.ndim < k or tuple(x.shape[-k:]) != ns or ns[-1] < 2:
        raise ValueError(
            f"{name}: expected input of shape (*, {', '.join(map(str, ns))}) with last dim >= 2, got {tuple(x.shape)}"
        )
    cd = compute_dtype(x.dtype)
    rows, last = math.prod(ns[:-1]), ns[-1]
    w = weight.reshape(rows, last).to(cd) if weight is not None else None
    b = bias.reshape(rows, last).to(cd) if bias is not None else None
    lam = _lambda_tensor(lambda_, x).to(cd)
    y, u = rnorm_planes(x.reshape(-1, rows, last).to(cd), w, b, lam, eps, alpha if bayes else 0.0, bayes, False)
    return y.reshape(x.shape).to(x.dtype), u.reshape(*x.shape[: x.ndim - k], *([1] * k)).to(x.dtype)


def _functional_2d(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lambda_: float | torch.Tensor,
    alpha: float,
    eps: float,
    bayes: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    name = "bayesian_r_layer_norm2d" if bayes else "r_layer_norm2d"
    x = _check_input(x, name)
    _check_config(eps, alpha, 0.5, 0.0, 1.0)
    if x.ndim != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
    c = x.shape[1]
    cd = compute_dtype(x.dtype)
    w = weight.reshape(c, 1, 1).to(cd) if weight is not None else None
    b = bias.reshape(c, 1, 1).to(cd) if bias is not None else None
    lam = _lambda_tensor(lambda_, x).to(cd)
    y, u = rnorm_planes(x.to(cd), w, b, lam, eps, alpha if bayes else 0.0, bayes, True)
    return y.to(x.dtype), u.to(x.dtype)


def r_layer_norm(
    x: torch.Tensor,
    normalized_shape: _Shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Functional :class:`RLayerNorm` (``y = w x_c / (sigma (1 + lambda r)) + b``)."""
    return _functional_last_dims(x, normalized_shape, weight, bias, lambda_, 0.0, eps, False)[0]


def bayesian_r_layer_norm(
    x: torch.Tensor,
    normalized_shape: _Shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    alpha: float = 1.0,
    eps: float = 1e-5,
    return_uncertainty: bool = False,
) -> Any:
    """Functional :class:`BayesianRLayerNorm`; returns ``(y, u)`` with ``return_uncertainty``."""
    y, u = _functional_last_dims(x, normalized_shape, weight, bias, lambda_, alpha, eps, True)
    return (y, u) if return_uncertainty else y


def r_layer_norm2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Functional :class:`RLayerNorm2d`."""
    return _functional_2d(x, weight, bias, lambda_, 0.0, eps, False)[0]


def bayesian_r_layer_norm2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    alpha: float = 1.0,
    eps: float = 1e-5,
    return_uncertainty: bool = False,
) -> Any:
    """Functional :class:`BayesianRLayerNorm2d`; returns ``(y, u)`` with ``return_uncertainty``."""
    y, u = _functional_2d(x, weight, bias, lambda_, alpha, eps, True)
    return (y, u) if return_uncertainty else y


def noise_ratio(x: torch.Tensor, eps: float = 1e-5, two_d: bool = True) -> torch.Tensor:
    """The noise ratio r = nu/(v + eps) per group (keepdim): over (H, W) of an (N, C, H, W) map when ``two_d``,
    else over the last dim with the width-3 window along it (N0)."""
    x = _check_input(x, "noise_ratio")
    cd = compute_dtype(x.dtype)
    planes = x.to(cd) if two_d else x.to(cd).unsqueeze(-2)
    r = group_stats(planes, eps, two_d)["r"]
    return (r if two_d else r.squeeze(-2)).to(x.dtype)


__all__ = [
    "bayesian_r_layer_norm",
    "bayesian_r_layer_norm2d",
    "box_sum",
    "box_sum_adjoint",
    "group_stats",
    "noise_ratio",
    "r_layer_norm",
    "r_layer_norm2d",
    "reuse_weights",
    "rnorm_planes",
]
