"""R-LayerNorm kernels and functional forms: forward and closed-form backward (theorems N0..N10, proofs/norm.md).

The formula and its helpers live in ``_norm_formula.py``; this module holds the eager kernel (one autograd node with
the closed-form backward of N3), the choice of path for each call (``_dispatch.py``: fused C kernel, torch operator,
eager node, or plain torch operations) and the functional forms.

Saved for backward: the input, the affine weight, and per-group scalars only (no tensor the size of the input
beyond the input itself). The backward recomputes x_c and B x_c.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from rln_verified._dispatch import (
    autocast_dtype,
    eager_f32,
    jit_tracing,
    onnx_exporting,
    recompute_vjp,
    recording,
    under_func_transform,
)
from rln_verified._native import rnorm
from rln_verified._norm_formula import (
    add_edge_term,
    box_sum,
    box_sum_adjoint,
    group_stats,
    inflation,
    lambda_of,
    norm_const,
    plain_planes,
    plane_dot,
    reduce_to,
    saturating_cast,
    unscaled_inverse,
)
from rln_verified._validation import check_float_tensor, compute_dtype

Shape = int | Sequence[int] | torch.Size


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
        f, dlogf, u = inflation(lam.to(sd) * st["r"], alpha, bayes)
        a = 1.0 / (sigma * f)
        a_s = unscaled_inverse(a, st["s"], st["v"], f, eps)
        if weight is not None and weight.shape[-2:] == (1, 1):
            # per-channel weight folds into the per-group scalar
            scale, xcs = saturating_cast(a * weight.to(sd), cd), st["xc"]
        elif weight is not None:
            scale, xcs = weight, st["xc"] * saturating_cast(a, cd)
        else:
            scale, xcs = saturating_cast(a, cd), st["xc"]
        # x_c * scale + bias: torch.addcmul with a broadcast bias measured 2.5x slower than these two passes.
        y = xcs * scale
        if bias is not None:
            y = y + bias
        # The user-facing u and the saved one must be distinct tensors (the saved one is non-differentiable).
        u_out = u.to(cd) if u.dtype != cd else u.clone()
        return y, u_out, st["mean"], st["s"], sigma, st["r"], f, dlogf, u, a_s

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, lam, eps, alpha, bayes, two_d = inputs
        _, _, mean, s, sigma, r, f, dlogf, u, a_s = output
        ctx.eps, ctx.alpha, ctx.bayes, ctx.two_d = eps, alpha, bayes, two_d
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.lam_dtype = lam.dtype
        ctx.save_for_backward(x, weight, bias, lam, mean, s, sigma, r, f, dlogf, u, a_s)
        ctx.mark_non_differentiable(mean, s, sigma, r, f, dlogf, u, a_s)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, gu: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        x, weight, bias, lam, mean, s, sigma, r, f, dlogf, u, a_s = ctx.saved_tensors
        two_d, bayes = ctx.two_d, ctx.bayes
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula instead (every order)
            eps, alpha = ctx.eps, ctx.alpha

            def formula(*t: Any) -> tuple[torch.Tensor, ...]:
                return plain_planes(t[0], t[1], t[2], t[3], eps, alpha, bayes, two_d)

            grads = recompute_vjp(formula, (x, weight, bias, lam), ctx.needs_input_grad[:4], (gy, gu))
            return (*grads, None, None, None, None)
        p, l_ = x.shape[-2], x.shape[-1]
        m = p * l_
        c = norm_const(two_d)
        cd, sd = x.dtype, sigma.dtype
        xc = x * s.to(cd) - mean  # (torch.addcmul with a broadcast self measured 2.5x slower here)
        var_eps = sigma * sigma
        a = 1.0 / (sigma * f)
        per_channel = weight is not None and weight.shape[-2:] == (1, 1)
        w_sd = weight.to(sd) if per_channel and weight is not None else None
        gyxc = plane_dot(gy, xc).to(sd) if weight is None or per_channel else gy
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
            a_sum = plane_dot(gg, xc).to(sd) / sigma
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
        k_0_s = -(gg_sum / m) * a_s
        btb = box_sum_adjoint(box_sum(xc, two_d), two_d)
        if weight is None:
            gx = gy * saturating_cast(a_s, cd)
        elif w_sd is not None:
            gx = gy * saturating_cast(a_s * w_sd, cd)
        else:
            gx = gg * saturating_cast(a_s, cd)
        gx.addcmul_(xc, saturating_cast(k_xc * s, cd))
        gx.addcmul_(btb, saturating_cast(-(coef * s) / (c * c), cd))
        gx.add_(saturating_cast(k_0_s, cd))
        add_edge_term(gx, xc, saturating_cast(coef * s, cd), two_d)
        g_lam = (g_t * r).sum().reshape(lam.shape).to(ctx.lam_dtype) if ctx.needs_input_grad[3] else None
        g_w = None
        if weight is not None and ctx.needs_input_grad[1]:
            per_elem = (gyxc * a).to(cd) if w_sd is not None else gy * xc * saturating_cast(a, cd)
            g_w = reduce_to(per_elem, weight.shape)
        g_b = reduce_to(gy, ctx.bias_shape) if ctx.bias_shape is not None and ctx.needs_input_grad[2] else None
        return gx, g_w, g_b, g_lam, None, None, None, None


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
    """Apply the kernel to ``x`` of shape (..., P, L) in its own dtype; weight and bias broadcast against it: per
    channel, shaped (C, 1, 1), in the 2d layout, per element, shaped (P, L), in the last-dims layout.

    float32 CPU inputs go through the fused kernel of ``_native.rnorm`` when it is available (same formula, N11);
    float32 CUDA inputs through the operator ``rln_verified::rnorm_forward``, whose CUDA kernel is :func:`plain_planes`
    (both chosen by :func:`_fused`).
    """
    if recording():
        if onnx_exporting():  # ONNX has neither the operator nor frexp: plain operations only
            return plain_planes(x, weight, bias, lam, eps, alpha, bayes, two_d, no_frexp=True)
    elif under_func_transform(x, weight, bias, lam):
        return plain_planes(x, weight, bias, lam, eps, alpha, bayes, two_d)
    fused = _fused(x, weight, bias, lam, NormConfig(eps, alpha, bayes, two_d, ()), x.shape[-2], x.shape[-1],
                   (*tuple(x.shape[:-2]), 1, 1))
    if fused is not None:
        return fused
    if jit_tracing():  # the trace records plain operations, never a Python autograd node
        return plain_planes(x, weight, bias, lam, eps, alpha, bayes, two_d)
    out = _RNormFn.apply(x, weight, bias, lam, eps, alpha, bayes, two_d)  # type: ignore[no-untyped-call]
    return out[0], out[1]


# ---- configuration (no tensor data is read: no host sync) ----------------------------------------------


def check_config(eps: float, alpha: float, lambda_init: float, lambda_min: float, lambda_max: float) -> None:
    """Raise ``ValueError`` naming the first argument out of its domain."""
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


def as_shape(normalized_shape: Shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(n) for n in normalized_shape)


class NormConfig(NamedTuple):
    """Everything about one R-LayerNorm call but the tensors.

    ``shape``: for the last-dims layout the normalized shape; for the 2d layout ``(C,)`` to require C channels, or
    ``()`` for any. ``lambda_min`` None: the lambda tensor is lambda itself (the functional forms); else it is the
    raw parameter of N8, lambda = lambda_min + (lambda_max - lambda_min)(1 + sin raw)/2 (the layers).
    ``float32_under_autocast``: under autocast, compute from float16/bfloat16 upcast to float32 and return float32,
    as torch's layer_norm and group_norm do (the layers); otherwise return the input's dtype.
    """

    eps: float
    alpha: float
    bayes: bool
    two_d: bool
    shape: tuple[int, ...]
    lambda_min: float | None = None
    lambda_max: float = 1.0
    float32_under_autocast: bool = False


# ---- the one entry: input checks and the choice of path -------------------------------------------------


def _fused(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, lam: torch.Tensor,
           cfg: NormConfig, p: int, l_: int, u_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fused float32 kernel on x viewed as (p, l_) planes (N11), or on CUDA the operator with its CUDA kernel
    (the plain formula), or None where neither applies. It takes lambda as given (raw or not) and the un-reshaped
    affine, so the graph has one node."""
    if x.dtype != torch.float32:
        return None
    if weight is None and bias is not None:  # a bias alone (the functional forms): the kernel with a unit weight
        weight = torch.ones(bias.shape, dtype=bias.dtype, device=bias.device)
    # a weight is per channel (mode 1) in the 2d layout, whether shaped (C,) or (C, 1, 1), else per element (mode 2)
    mode = 0 if weight is None else (1 if cfg.two_d else 2)
    eager = eager_f32(x, weight, bias, lam)  # the common case, in one test
    if eager:
        if not rnorm.eager_usable(x, weight, bias, lam, mode, p, l_):
            return None
    else:
        if recording():
            if onnx_exporting():  # ONNX has no lowering of the operator: the plain formula
                return None
        elif under_func_transform(x, weight, bias, lam):
            return None
        if not rnorm.usable(x, weight, bias, lam, mode, p, l_):
            return None
    pc = rnorm.PlaneConfig(cfg.lambda_min, cfg.lambda_max, cfg.eps, cfg.alpha, cfg.bayes, cfg.two_d, mode, p, l_)
    return rnorm.apply(x, weight, bias, lam, pc, u_shape, eager)


def r_norm(
    x: object,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lam: torch.Tensor,
    cfg: NormConfig,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, u)`` of the R-LayerNorm family: every layer's forward and every functional form is one call of this.

    It checks the input (``name`` is the caller named in errors), applies the autocast policy, and picks the path:
    the fused float32 kernel or its operator (:func:`_fused`), else :func:`rnorm_planes` in the compute dtype
    (float16 and bfloat16 in float32). ``u`` has the input's shape with the normalized dims kept as 1.
    """
    x = check_float_tensor(x, name)
    if cfg.float32_under_autocast and autocast_dtype(x.device.type) is not None:
        up = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        with torch.autocast(x.device.type, enabled=False):
            return r_norm(up, weight, bias, lam, cfg._replace(float32_under_autocast=False), name)
    if cfg.two_d:
        if x.ndim != 4:
            raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
        c = x.shape[1]
        if cfg.shape and c != cfg.shape[0]:
            raise ValueError(f"{name}: expected {cfg.shape[0]} channels, i.e. shape (N, {cfg.shape[0]}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            raise ValueError(f"{name}: expected a 4-D input (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
        p, l_ = x.shape[-2], x.shape[-1]
        u_shape: tuple[int, ...] = (x.shape[0], c, 1, 1)
        wshape: tuple[int, ...] = (c, 1, 1)
        planes = x
    else:
        ns = cfg.shape
        k = len(ns)
        if x.ndim < k or tuple(x.shape[-k:]) != ns or ns[-1] < 2:
            raise ValueError(f"{name}: expected input of shape (*, {', '.join(map(str, ns))}) with last dim >= 2, "
                             f"got {tuple(x.shape)}")
        p, l_ = math.prod(ns[:-1]), ns[-1]
        u_shape = (*x.shape[: x.ndim - k], *([1] * k))
        planes, wshape = x.reshape(-1, p, l_), (p, l_)
    for arg, t in (("weight", weight), ("bias", bias)):
        # the shape itself, as torch's layer_norm and group_norm check it: a (5, 4) weight for a (4, 5) normalized
        # shape has the right number of elements and the wrong layout
        if t is None:
            continue
        if cfg.two_d:
            ok = t.ndim in (1, 3) and t.shape[0] == c and all(d == 1 for d in t.shape[1:])
        else:
            ok = t.ndim == len(cfg.shape) and all(a == b for a, b in zip(t.shape, cfg.shape, strict=True))
        if not ok:
            want = (f"shape ({c},) or ({c}, 1, 1), one per channel" if cfg.two_d
                    else f"shape {tuple(cfg.shape)}, the normalized shape")
            raise ValueError(f"{name}: {arg} must have {want}, got shape {tuple(t.shape)}")
    fused = _fused(x, weight, bias, lam, cfg, p, l_, u_shape)
    if fused is not None:
        return fused
    cd = compute_dtype(x.dtype)
    if cfg.lambda_min is not None:
        lam = lambda_of(lam, cfg.lambda_min, cfg.lambda_max).reshape(())
    w = weight.reshape(wshape).to(cd) if weight is not None else None
    b = bias.reshape(wshape).to(cd) if bias is not None else None
    y, u = rnorm_planes(planes.to(cd), w, b, lam.to(cd), cfg.eps, cfg.alpha, cfg.bayes, cfg.two_d)
    return y.reshape(x.shape).to(x.dtype), u.reshape(u_shape).to(x.dtype)


# ---- functional forms ---------------------------------------------------------------------------------------


def _lambda_tensor(lambda_: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """lambda_ as a tensor. A number is checked (positive, finite); a tensor must hold one element, and its value is
    not read (that would wait on the device): it must be positive and finite, like the number."""
    if isinstance(lambda_, torch.Tensor):
        if lambda_.numel() != 1:
            raise ValueError(f"lambda_ must be a number or a one-element tensor, got shape {tuple(lambda_.shape)}")
        return lambda_
    if not 0 < float(lambda_) < math.inf:
        raise ValueError(f"lambda_ must be a positive finite number, got {lambda_!r}")
    return torch.tensor(float(lambda_), dtype=like.dtype, device=like.device)


def _functional(
    x: torch.Tensor,
    normalized_shape: Shape | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    lambda_: float | torch.Tensor,
    alpha: float,
    eps: float,
    bayes: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    two_d = normalized_shape is None
    name = ("bayesian_r_layer_norm" if bayes else "r_layer_norm") + ("2d" if two_d else "")
    x = check_float_tensor(x, name)
    check_config(eps, alpha, 0.5, 0.0, 1.0)  # the lambda triple is a placeholder: lambda_ is checked below
    shape = () if normalized_shape is None else as_shape(normalized_shape)
    cfg = NormConfig(eps, alpha if bayes else 0.0, bayes, two_d, shape)
    return r_norm(x, weight, bias, _lambda_tensor(lambda_, x), cfg, name)


def r_layer_norm(
    x: torch.Tensor,
    normalized_shape: Shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Functional :class:`RLayerNorm` (``y = w x_c / (sigma (1 + lambda r)) + b``). ``weight`` and ``bias`` have
    the normalized shape; ``lambda_`` is a positive finite number or a one-element tensor, whose value is not
    checked (that would wait on the device), so it must be positive and finite too."""
    return _functional(x, normalized_shape, weight, bias, lambda_, 0.0, eps, False)[0]


def bayesian_r_layer_norm(
    x: torch.Tensor,
    normalized_shape: Shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    alpha: float = 1.0,
    eps: float = 1e-5,
    return_uncertainty: bool = False,
) -> Any:
    """Functional :class:`BayesianRLayerNorm`; returns ``(y, u)`` with ``return_uncertainty``. Arguments as
    :func:`r_layer_norm`."""
    y, u = _functional(x, normalized_shape, weight, bias, lambda_, alpha, eps, True)
    return (y, u) if return_uncertainty else y


def r_layer_norm2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Functional :class:`RLayerNorm2d`. ``weight`` and ``bias`` are ``(C,)`` or ``(C, 1, 1)``; ``lambda_`` as
    :func:`r_layer_norm`."""
    return _functional(x, None, weight, bias, lambda_, 0.0, eps, False)[0]


def bayesian_r_layer_norm2d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lambda_: float | torch.Tensor = 0.5,
    alpha: float = 1.0,
    eps: float = 1e-5,
    return_uncertainty: bool = False,
) -> Any:
    """Functional :class:`BayesianRLayerNorm2d`; returns ``(y, u)`` with ``return_uncertainty``. Arguments as
    :func:`r_layer_norm2d`."""
    y, u = _functional(x, None, weight, bias, lambda_, alpha, eps, True)
    return (y, u) if return_uncertainty else y


def noise_ratio(x: torch.Tensor, eps: float = 1e-5, two_d: bool = True) -> torch.Tensor:
    """The noise ratio r = nu/(v + eps) per group (keepdim): over (H, W) of an (N, C, H, W) map when ``two_d``,
    else over the last dim with the width-3 window along it (N0)."""
    x = check_float_tensor(x, "noise_ratio")
    if two_d and (x.ndim < 2 or x.shape[-1] < 2 or x.shape[-2] < 2):
        raise ValueError(f"noise_ratio: two_d needs maps of at least 2 x 2 in the last two dims, got shape "
                         f"{tuple(x.shape)}")
    if not two_d and (x.ndim < 1 or x.shape[-1] < 2):
        raise ValueError(f"noise_ratio: needs a last dim of at least 2, got shape {tuple(x.shape)}")
    cd = compute_dtype(x.dtype)
    planes = x.to(cd) if two_d else x.to(cd).unsqueeze(-2)
    r = group_stats(planes, eps, two_d, no_frexp=onnx_exporting())["r"]
    return (r if two_d else r.squeeze(-2)).to(x.dtype)


__all__ = [
    "NormConfig",
    "Shape",
    "as_shape",
    "bayesian_r_layer_norm",
    "bayesian_r_layer_norm2d",
    "check_config",
    "noise_ratio",
    "r_layer_norm",
    "r_layer_norm2d",
    "r_norm",
    "rnorm_planes",
]
