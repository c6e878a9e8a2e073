"""Gaussian kernels: pdf/cdf/logcdf, moments of relu of a Gaussian, Gaussian KL.

Theorems GAUSS-*, RELU-*, CRELU-* and KL-* in ``proofs/gaussian.md``; float32 on CPU, ``relu_moments`` runs the
fused kernel of ``_native/gauss.py`` (RELU-6). Tails use the Mills ratio
``R(y) = sqrt(pi/2) erfcx(y/sqrt 2)``, never ``torch.special.ndtr``, which on CPU forms ``1 - tiny`` and has
no relative accuracy below ``z ~ -5``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rln_verified._dispatch import jit_tracing, recompute_vjp, recording, under_func_transform
from rln_verified._gaussian_formula import (
    _INV_SQRT_2PI,
    A_CLAMP,
    CF_DEPTH,
    X_SPLIT,
    exp_scaled,
    half_erfcx,
    ldexp,
    phi_cdf,
    phi_scaled,
    refuse_onnx,
    relu_moments_f64,
    safe_ratio,
)
from rln_verified._native import gauss
from rln_verified._special import psi
from rln_verified._validation import check_float_tensor, check_same_dtype, compute_dtype

Tensorish = torch.Tensor | float

# ---- pdf / cdf / logcdf --------------------------------------------------------------------------


def _as_tensor(v: Tensorish, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        check_float_tensor(v, name)
        check_same_dtype(("x", like), (name, v))
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float or a floating-point tensor, got {type(v).__name__}")
    return torch.tensor(float(v), dtype=like.dtype, device=like.device)


def _standardize(fn: str, x: torch.Tensor, mu: Tensorish, sigma: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
    check_float_tensor(x, f"{fn}: x")
    m = _as_tensor(mu, x, f"{fn}: mu")
    s = _as_tensor(sigma, x, f"{fn}: sigma")
    cd = compute_dtype(x.dtype)
    xc, mc, sc = x.to(cd), m.to(cd), s.to(cd)
    z = (xc - mc) / sc
    # sigma <= 0 is out of the domain: NaN at that element (GAUSS-1).
    z = torch.where(sc > 0, z, torch.full_like(z, math.nan))
    return z, sc


def normal_pdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    r"""Density of :math:`N(\mu, \sigma^2)`: :math:`\exp(-z^2/2)/(\sigma\sqrt{2\pi})`, :math:`z = (x-\mu)/\sigma`.

    Relative error <= ``(16 + 3 z^2) u`` wherever the result is a normal float (GAUSS-1); the
    ``z^2`` term is the conditioning of ``exp(-z^2/2)`` to the rounding of ``z``. ``sigma <= 0`` gives
    NaN at that element. float16/bfloat16 are computed in float32.

    Raises:
        TypeError: a non-float tensor, or tensors of different dtypes.
    """
    z, s = _standardize("normal_pdf", x, mu, sigma)
    # phi(z)/sigma = (base / s') 2^(-n - e) with phi(z) = base 2^-n and sigma = s' 2^e, s' in [1/2, 4):
    # the powers of two come last, so a tiny sigma lifts a subnormal phi(z) without losing digits.
    base, nexp = phi_scaled(z.abs())
    ok = (s > 0) & (s < math.inf)
    s_ok = torch.where(ok, s, torch.ones_like(s))
    e = torch.floor(torch.log2(s_ok))
    s_mant = ldexp(s_ok, -e)
    out = ldexp(base / s_mant, -nexp - e)
    out = torch.where(s == math.inf, torch.zeros_like(out), out)
    return torch.where(torch.isnan(z), z, out).to(x.dtype)


def normal_cdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    r""":math:`\Phi((x-\mu)/\sigma)`, as ``exp(-z^2/2) erfcx(|z|/sqrt 2)/2`` (accurate in both tails).

    Relative error <= ``(16 + 3 z^2) u`` wherever the result is a normal float (GAUSS-1).
    ``sigma <= 0`` gives NaN at that element. float16/bfloat16 are computed in float32.

    Raises:
        TypeError: a non-float tensor, or tensors of different dtypes.
    """
    z, _ = _standardize("normal_cdf", x, mu, sigma)
    # Not torch.special.ndtr: on CPU it loses all accuracy below z ~ -10 (it forms 1 - tiny).
    return phi_cdf(z)[1].to(x.dtype)


def normal_logcdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    r""":math:`\log\Phi((x-\mu)/\sigma)`: ``torch.special.log_ndtr`` for ``z <= 1`` (finite deep in the lower
    tail), ``log1p(-Q(z))`` with the erfcx form of ``Q`` for ``z > 1``.

    Relative error <= ``(16 + 3 z^2) u`` (GAUSS-1). ``sigma <= 0`` gives NaN at that
    element. float16/bfloat16 are computed in float32.

    Raises:
        TypeError: a non-float tensor, or tensors of different dtypes.
    """
    z, _ = _standardize("normal_logcdf", x, mu, sigma)
    # z > 1: log1p(-Q(z)) with Q from the erfcx form, the form GAUSS-1's proof bounds; z <= 1: log_ndtr (8u, an
    # external bound). torch 2.13's log_ndtr happens to meet GAUSS-1 above 1 as well (tests/mutation/equivalent.toml).
    pos = z > 1
    upper = torch.log1p(-phi_cdf(torch.where(pos, z, torch.ones_like(z)))[2])
    lower = torch.special.log_ndtr(torch.where(pos, torch.zeros_like(z), z))
    return torch.where(pos, upper, lower).to(x.dtype)


# ---- relu moments --------------------------------------------------------------------------------


class _ReluMoments(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return relu_moments_f64(mu, sigma)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        mu, sigma = inputs
        mean, _ = output
        ctx.save_for_backward(mu, sigma, mean)

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor, g_var: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        mu, sigma, mean = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the VJP of the same forms in plain torch, every order
            return recompute_vjp(relu_moments_f64, (mu, sigma), ctx.needs_input_grad, (g_mean, g_var))
        # RELU-5: dmean/dmu = Phi(a), dmean/dsigma = phi(a), dvar/dmu = 2 mean (1 - Phi(a)),
        # dvar/dsigma = 2 (sigma Phi(a) - mean phi(a)); a = +-inf or 0 at sigma = 0 keeps all finite.
        a = safe_ratio(mu, sigma)
        pos = a >= 0
        y = torch.where(pos, a, -a)  # |a| with derivative +1 at 0 (for double backward)
        e, nexp = exp_scaled(y)
        base = e * _INV_SQRT_2PI
        small = e * half_erfcx(y)  # Q(|a|) 2^n (the constants folded: exactly 1/2)
        pdf = ldexp(base, -nexp)
        q_small = ldexp(small, -nexp)
        big = 1.0 - q_small
        cdf = torch.where(pos, big, q_small)
        # mean Q(a), sigma Phi(a), mean phi(a) with the tiny factor's 2^-n applied last, so a large
        # mean or sigma times a subnormal Q or phi keeps its accuracy where the product is normal.
        mean_q = torch.where(pos, ldexp(mean * small, -nexp), mean * big)
        sig_cdf = torch.where(pos, sigma * big, ldexp(sigma * small, -nexp))
        mean_pdf = ldexp(mean * base, -nexp)
        g_mu = g_mean * cdf + g_var * (2.0 * mean_q)
        g_sigma = g_mean * pdf + g_var * (2.0 * (sig_cdf - mean_pdf))
        return g_mu, g_sigma


def _check_pair(fn: str, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_float_tensor(mu, f"{fn}: mu")
    check_float_tensor(sigma, f"{fn}: sigma")
    check_same_dtype((f"{fn}: mu", mu), (f"{fn}: sigma", sigma))
    try:
        mu_b, sigma_b = torch.broadcast_tensors(mu, sigma)  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise ValueError(
            f"{fn}: mu and sigma must broadcast together, got shapes {tuple(mu.shape)} and {tuple(sigma.shape)}"
        ) from None
    return mu_b, sigma_b


def relu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of :math:`\max(X, 0)` for :math:`X \sim N(\mu, \sigma^2)`.

    With :math:`a = \mu/\sigma`:

    .. math::
        E = \mu\Phi(a) + \sigma\varphi(a),\qquad
        \mathrm{Var} = \sigma^2\big[(a^2+1)\Phi(a) + a\varphi(a)\big] - E^2 .

    Evaluated without cancellation: for ``a < -4.5`` through the ratios ``Hh_n/Hh_{n-1}`` of a positive
    continued fraction, for ``a >= 0`` through a rearranged variance (RELU-1, RELU-4). Always computed in
    float64 and cast back: relative error <= 1e-12 (float64) and <= 1e-5 (float32) for ``|a| <= 1e3``
    where the true value is normal (RELU-4). ``mean >= 0`` and ``var >= 0`` for every input (RELU-2).
    ``sigma = 0`` gives ``(relu(mu), 0)`` with finite gradients (RELU-3). The backward is closed form
    (RELU-5). ``sigma < 0`` or a NaN input gives NaN at that element only. float32 on CPU runs the fused kernel
    of ``_native/gauss.c`` (same forms, within 1 float32 ulp of the eager path, RELU-6), and the eager kernel
    where it is not built; float32 on CUDA runs the operator ``rln_verified::relu_moments_f32``, whose CUDA kernel
    evaluates the eager forms.

    Args:
        mu, sigma: floating-point tensors of one dtype that broadcast together.

    Raises:
        TypeError: a non-float tensor, or tensors of different dtypes.
        ValueError: shapes that do not broadcast.
    """
    mu_b, sigma_b = _check_pair("relu_moments", mu, sigma)
    refuse_onnx("relu_moments")
    if recording() or mu_b.is_meta:
        # compile/export/jit.trace and meta tensors: the kernel as one opaque operator with a shape function
        if mu_b.dtype == torch.float32 and (mu_b.is_cpu or mu_b.is_meta or mu_b.is_cuda):
            mean, var, _ = gauss.relu_moments_op(mu_b, sigma_b)
            return mean, var
        if jit_tracing():  # a saved trace holds no Python autograd.Function: the plain forms, as under torch.func
            return gauss.relu_moments_plain(mu_b, sigma_b)
    elif under_func_transform(mu_b, sigma_b):  # torch.func: the plain forms, which every transform understands
        return gauss.relu_moments_plain(mu_b, sigma_b)
    elif gauss.usable(mu_b, sigma_b):  # float32 on CPU: the fused kernel, same forms (RELU-6)
        return gauss.relu_moments_f32(mu_b, sigma_b)
    elif mu_b.is_cuda and mu_b.dtype == torch.float32:  # float32 CUDA: the operator, as under compile
        mean, var, _ = gauss.relu_moments_op(mu_b, sigma_b)
        return mean, var
    mean, var = _ReluMoments.apply(mu_b.to(torch.float64), sigma_b.to(torch.float64))  # type: ignore[no-untyped-call]
    return mean.to(mu.dtype), var.to(mu.dtype)


def neg_relu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of :math:`\max(-X, 0)`, :math:`X \sim N(\mu, \sigma^2)`: ``relu_moments(-mu, sigma)``.

    Negation is exact, so every bound of :func:`relu_moments` carries over (CRELU-1).
    """
    check_float_tensor(mu, "neg_relu_moments: mu")
    return relu_moments(-mu, sigma)


def crelu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Moments of :math:`[\max(X,0), \max(-X,0)]` concatenated on the last dimension (CRELU-1).

    Output shapes double the last dimension of the broadcast shape of ``mu`` and ``sigma``.
    """
    mu_b, sigma_b = _check_pair("crelu_moments", mu, sigma)
    if mu_b.dim() == 0:
        raise ValueError("crelu_moments: needs at least one dimension to concatenate on, got 0-d tensors")
    mp, vp = relu_moments(mu_b, sigma_b)
    mn, vn = relu_moments(-mu_b, sigma_b)
    return torch.cat([mp, mn], dim=-1), torch.cat([vp, vn], dim=-1)


# ---- KL ------------------------------------------------------------------------------------------


def kl_normal(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    r""":math:`KL(N(\mu_q,\sigma_q^2)\,\|\,N(\mu_p,\sigma_p^2))` in closed form (KL-1).

    .. math::
        KL = \tfrac12\Big[\big(\tfrac{\mu_q-\mu_p}{\sigma_p}\big)^2 + g(r)\Big],\quad r=\sigma_q/\sigma_p,\quad
        g(r) = r^2-1-2\ln r .

    ``g`` is evaluated without cancellation: with ``t = r^2 - 1`` formed as
    ``((sq - sp)/sp)((sq + sp)/sp)``, ``g = t (t/(1+t)) - psi(t)`` for ``t >= 0``, ``g = psi(1/r^2 - 1)``
    for ``1/2 <= r < 1`` and ``g = (r^2 - 1) - 2 ln r`` for ``r < 1/2``, so no intermediate overflows where KL
    is finite. The result is >= 0, and exactly 0 when the two distributions are equal.
    ``sigma_q < 0`` or ``sigma_p <= 0`` gives NaN at that element. float16/bfloat16 are computed in
    float32. float32 on CPU (eager, no torch.func) runs the fused kernel of ``_native/gauss.c``: float64 inside,
    one rounding, relative error <= u32 + 2^-44, with a hand-written backward (KL-2).

    Raises:
        TypeError: a non-float tensor, or tensors of different dtypes.
        ValueError: shapes that do not broadcast together (every dtype and device).
    """
    names = ("mu_q", "sigma_q", "mu_p", "sigma_p")
    args = (mu_q, sigma_q, mu_p, sigma_p)
    for n, t in zip(names, args):
        check_float_tensor(t, f"kl_normal: {n}")
    check_same_dtype(*((f"kl_normal: {n}", t) for n, t in zip(names, args)))
    try:  # every path, so that every dtype and device raises the same error
        torch.broadcast_shapes(*(t.shape for t in args))  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise ValueError("kl_normal: the arguments must broadcast together, got shapes "
                         f"{[tuple(t.shape) for t in args]}") from None
    if (mu_q.dtype == torch.float32 and not recording() and not under_func_transform(*args)
            and gauss.usable(*args)):
        # float32 on CPU: the fused kernel, float64 inside and one rounding (KL-2), with its own backward
        b = torch.broadcast_tensors(*args)  # type: ignore[no-untyped-call]
        out: torch.Tensor = _KLNormalF32.apply(*b)  # type: ignore[no-untyped-call]
        return out
    return _kl_normal_plain(*args)


def _kl_normal_plain(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor,
                     sigma_p: torch.Tensor) -> torch.Tensor:
    """KL-1's forms in plain torch (every dtype, device and transform)."""
    args = (mu_q, sigma_q, mu_p, sigma_p)
    cd = compute_dtype(mu_q.dtype)
    mq, sq, mp, sp = (t.to(cd) for t in args)
    d = (mq - mp) / sp
    up = sq >= sp
    # Masked inputs: each branch sees a harmless sigma pair where the other branch is taken.
    one = torch.ones_like(sq)
    sq_u, sp_u = torch.where(up, sq, one), torch.where(up, sp, one)
    sq_l, sp_l = torch.where(up, one, sq), torch.where(up, one, sp)
    t = ((sq_u - sp_u) / sp_u) * ((sq_u + sp_u) / sp_u)
    # t^2/(1+t) as t (t/(1+t)): no t^2 to overflow (KL-1).
    g_up = t * (t / (1.0 + t)) - psi(t)
    g_up = torch.where(t == math.inf, t, g_up)  # t overflowed (r beyond KL-1's range): KL = inf, not inf/inf
    # r < 1/2: g = (r^2 - 1) - 2 ln r directly (no cancellation: -2 ln r >= 1.38 > |r^2 - 1|/0.72); ln r from the
    # quotient, or from log(sq) - log(sp) where the quotient underflows. 1/2 <= r < 1: g = psi(1/r^2 - 1), s <= 3.
    small = sq_l < 0.5 * sp_l
    rr = sq_l / sp_l
    tiny = float(torch.finfo(cd).tiny)
    ln_r = torch.where(rr >= tiny, torch.log(torch.where(rr >= tiny, rr, one)), torch.log(sq_l) - torch.log(sp_l))
    g_small = (rr * rr - 1.0) - 2.0 * ln_r
    sq_m, sp_m = torch.where(small, one, sq_l), torch.where(small, one, sp_l)
    s = ((sp_m - sq_m) / sq_m) * ((sp_m + sq_m) / sq_m)
    g_lo = torch.where(small, g_small, psi(s))
    # KL-1: g_up >= t^2/(2(1+t)) (1 - O(u)) > 0 in floating point; the clamp only guards the
    # underflow corner where t^2 is subnormal and both terms round to neighbouring subnormals.
    g = torch.where(up, g_up.clamp(min=0.0), g_lo)
    kl = 0.5 * (d * d + g)
    bad = (sq < 0) | (sp <= 0)
    return torch.where(bad, torch.full_like(kl, math.nan), kl).to(mu_q.dtype)


def _kl_plain_tuple(mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor) -> tuple[torch.Tensor]:
    return (_kl_normal_plain(mq, sq, mp, sp),)


class _KLNormalF32(torch.autograd.Function):
    """KL-2: the Gaussian KL of float32 CPU tensors of one (broadcast) shape through the fused kernel, with its
    hand-written backward (dmq = (mq - mp)/sp^2, dsq = (sq^2 - sp^2)/(sq sp^2), dmp = -dmq,
    dsp = (sp^2 - sq^2 - (mq - mp)^2)/sp^3), each formed in float64 and rounded once."""

    @staticmethod
    def forward(ctx: Any, mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mq, sq, mp, sp)
        return gauss.kl_forward_raw(mq, sq, mp, sp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        mq, sq, mp, sp = ctx.saved_tensors
        need = tuple(bool(n) for n in ctx.needs_input_grad)
        if torch.is_grad_enabled():  # create_graph: the VJP of KL-1's plain forms, every order
            return recompute_vjp(_kl_plain_tuple, (mq, sq, mp, sp), need, (g,))
        return gauss.kl_backward_raw(g.to(torch.float32), mq, sq, mp, sp,
                                             (need[0], need[1], need[2], need[3]))


__all__ = [
    "A_CLAMP",
    "CF_DEPTH",
    "X_SPLIT",
    "crelu_moments",
    "kl_normal",
    "neg_relu_moments",
    "normal_cdf",
    "normal_logcdf",
    "normal_pdf",
    "relu_moments",
]
