"""Plain-torch formulas of the Gaussian kernels (RELU-1..4, proofs/gaussian.md): the Mills-ratio tails and the float64
forward of the ReLU moments. No autograd node and no path choice: ``_gaussian.py`` (the functional forms) and the
fused kernel's binding ``_native/gauss.py`` both build on these."""

from __future__ import annotations

import math

import torch

from rln_verified._dispatch import onnx_exporting

# The correctly rounded float64 values (the C and Triton kernels use the same literals); math.sqrt(0.5 * math.pi)
# would be 1 ulp low, since 0.5 * math.pi is already rounded.
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_HALF_PI = 1.2533141373155003
_SQRT_HALF = 0.7071067811865476
_INV_LN2 = 1.0 / math.log(2.0)
# fdlibm's split of ln 2: _LN2_HI is a multiple of 2^-32 (21 trailing zero bits), so n * _LN2_HI is exact for
# n < 2^21 (gaussian_sympy.py::check_phi_kernel).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_X_EXP_MAX = 100.0

# RELU-4: a = mu/sigma >= -X_SPLIT uses the closed forms in Phi, phi; a < -X_SPLIT uses the ratios
# r_n = Hh_n/Hh_{n-1} from a bottom-up continued fraction of depth CF_DEPTH. At x = X_SPLIT the
# truncation error is below 1e-15 (bracketed in gaussian_sympy.py::check_cf_truncation), and it
# decreases with x.
X_SPLIT = 4.5
CF_DEPTH = 32
# Beyond A_CLAMP, Phi(a) == 1 and phi(a) == 0 in float64, so clamping a there changes nothing.
A_CLAMP = 40.0


def refuse_onnx(fn: str) -> None:
    """Raise under ``torch.onnx.export``: ONNX has no erfcx, and the ``exp(y^2) erfc(y)`` an exporter puts in its
    place overflows in the tails these kernels are accurate in, so the exported graph would be silently wrong."""
    if onnx_exporting():
        raise NotImplementedError(
            f"{fn}: ONNX export is not supported: ONNX has no erfcx, and its exp(y^2) erfc(y) replacement overflows "
            "in the Gaussian tails this kernel is accurate in; use torch.export (the program keeps the kernel), or "
            "compute this part outside the ONNX graph"
        )


def mills(y: torch.Tensor) -> torch.Tensor:
    """Mills ratio R(y) = Q(y)/phi(y) = sqrt(pi/2) erfcx(y/sqrt 2) for y >= 0; R(inf) = 0."""
    refuse_onnx("the Gaussian tail (Mills ratio)")
    out: torch.Tensor = _SQRT_HALF_PI * torch.special.erfcx(y * _SQRT_HALF)
    return out


def half_erfcx(y: torch.Tensor) -> torch.Tensor:
    """erfcx(y/sqrt 2)/2, so that Q(y) = exp(-y^2/2) half_erfcx(y) for y >= 0: the constants of phi and of the
    Mills ratio multiply to exactly 1/2 (1/sqrt(2 pi) sqrt(pi/2)), which is folded in here instead of rounding each
    (so Q(0) = 1/2 exactly)."""
    refuse_onnx("the Gaussian tail (Mills ratio)")
    out: torch.Tensor = 0.5 * torch.special.erfcx(y * _SQRT_HALF)
    return out


def phi_cdf(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phi(a), Phi(a), Phi(-a)), each with relative accuracy in its tail (no 1 - tiny)."""
    pos = a >= 0
    y = torch.where(pos, a, -a)  # |a|, but with derivative +1 at a = 0 (abs has 0 there)
    e = torch.exp(-0.5 * y * y)
    pdf = e * _INV_SQRT_2PI
    small = e * half_erfcx(y)  # Phi(-|a|)
    big = 1.0 - small
    return pdf, torch.where(pos, big, small), torch.where(pos, small, big)


def exp_scaled(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, n) with exp(-y^2/2) = e 2^-n, n = floor(y^2/(2 ln 2)) >= 0, e = exp(-f) in (1/2, 1];
    f = (y^2/2 - n ln2_hi) - n ln2_lo, where n ln2_hi is exact (RELU-4). y >= 0."""
    ye = y.clamp(max=_X_EXP_MAX)  # beyond it phi(y) 2^1024 < 2^-1074: every use rounds to 0 anyway
    ee = 0.5 * ye * ye
    nexp = torch.floor(ee * _INV_LN2)
    f = (ee - nexp * _LN2_HI) - nexp * _LN2_LO
    return torch.exp(-f), nexp


def phi_scaled(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, n) with phi(y) = base 2^-n, base = exp(-f)/sqrt(2 pi) in (0.2, 0.4] (see :func:`exp_scaled`)."""
    e, nexp = exp_scaled(y)
    return e * _INV_SQRT_2PI, nexp


def ldexp(v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """v 2^k for integer-valued float k: two factors 2^k1, 2^(k-k1) (k1 = floor(k/2)), exact and on the
    same side of 1, applied in turn, so the result is exact unless it is subnormal, and no partial
    product under- or overflows unless the result does."""
    k1 = torch.floor(0.5 * k)
    return v * torch.exp2(k1) * torch.exp2(k - k1)


def safe_ratio(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """a = mu/sigma, with the sigma = 0 limit: +inf, -inf, or 0 when mu = 0 too (RELU-3)."""
    s_pos = torch.where(sigma == 0, torch.ones_like(sigma), sigma)
    a = mu / s_pos
    neg_lim = torch.where(mu < 0, torch.full_like(mu, -math.inf), 0.0 * mu)
    lim = torch.where(mu > 0, torch.full_like(mu, math.inf), neg_lim)
    return torch.where(sigma == 0, lim, a)


def relu_moments_f64(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of RELU-1/RELU-4 on float64 tensors of one shape; no autograd."""
    a = safe_ratio(mu, sigma)
    tail = a < -X_SPLIT

    # Direct branch, a in [-X_SPLIT, A_CLAMP]; tail elements see a = 0 (masked input).
    ad = torch.where(tail, torch.zeros_like(a), a.clamp(max=A_CLAMP))
    pos = ad >= 0
    y = torch.where(pos, ad, -ad)  # |a| with derivative +1 at 0 (abs has 0 there): right higher derivatives
    e = torch.exp(-0.5 * y * y)
    pdf = e * _INV_SQRT_2PI
    rm = mills(y)  # R(|a|) = Q(|a|)/phi(|a|)
    q = e * half_erfcx(y)  # Phi(-|a|) = pdf rm, relative accuracy in the tail (the constants folded: exactly 1/2)
    cdf = 1.0 - q  # Phi(|a|) in [1/2, 1]
    # a >= 0: mean = mu Phi(a) + sigma phi(a) (positive terms);
    # var/sigma^2 = P + a^2 P Q - a phi (P - Q) - phi^2, cancellation factor <= 2 (RELU-1, RELU-4).
    mean_p = mu * cdf + sigma * pdf
    v_pos = cdf + y * y * cdf * q - y * pdf * (cdf - q) - pdf * pdf
    # a = -x in [-X_SPLIT, 0): mean/sigma = phi (1 - x R), E[Y^2]/sigma^2 = phi ((1 + x^2) R - x).
    # phi is a common factor, so only R's rounding meets the cancellation (factor <= 265, RELU-4).
    h1 = pdf * (1.0 - y * rm)
    mean_n = sigma * h1
    v_neg = pdf * ((1.0 + y * y) * rm - y) - h1 * h1
    mean_d = torch.where(pos, mean_p, mean_n)
    var_d = sigma * (sigma * torch.where(pos, v_pos, v_neg))

    # Tail branch, x = -a > X_SPLIT; direct elements see x = X_SPLIT (masked input).
    x = torch.where(tail, -a, torch.full_like(a, X_SPLIT))
    n_top = CF_DEPTH + 1
    # Seed: the fixed point of r = 1/(x + n r) at n = CF_DEPTH + 1 (any positive seed converges).
    r = (torch.sqrt(x * x + 4.0 * n_top) - x) / (2.0 * n_top)
    r = torch.where(x == math.inf, torch.zeros_like(r), r)
    r2 = r1 = r
    for n in range(CF_DEPTH, 0, -1):
        r = torch.reciprocal(torch.add(x, r, alpha=float(n)))
        if n == 3:
            r2 = r
        elif n == 2:
            r1 = r
    r0 = r
    # sigma phi(x) r0 r1 would underflow in phi for x > 38.6 even where the mean is normal (large sigma).
    # Exact power-of-two bookkeeping instead (RELU-4): phi(x) = base 2^-n with x^2/2 = n ln2 + f
    # (Cody-Waite) and base = exp(-f)/sqrt(2 pi) in (0.2, 0.4]. Every factor multiplied into sigma is
    # <= 1 and the powers of two come last, so nothing under- or overflows unless the result does.
    base, nexp = phi_scaled(x)
    core = base * r0 * r1  # Hh_1(x) 2^n
    mean_t = ldexp(sigma * core, -nexp)
    h1 = ldexp(core, -nexp)  # Hh_1(x); underflow here is harmless (it only corrects 2 r2)
    # var/sigma^2 = 2 Hh_2 - Hh_1^2 = Hh_1 (2 r_2 - Hh_1): both factors positive (RELU-2).
    # var = (sigma c 2^-n1)(sigma 2^-(n-n1)), c = core (2 r2 - h1) <= 1, n1 = floor(n/2).
    n1 = torch.floor(0.5 * nexp)
    var_t = ldexp(sigma * (core * (2.0 * r2 - h1)), -n1) * ldexp(sigma, n1 - nexp)

    mean = torch.where(tail, mean_t, mean_d)
    var = torch.where(tail, var_t, var_d)
    bad = torch.isnan(mu) | torch.isnan(sigma) | (sigma < 0)
    nan = torch.full_like(mean, math.nan)
    return torch.where(bad, nan, mean), torch.where(bad, nan, var)


__all__ = ["A_CLAMP", "CF_DEPTH", "X_SPLIT", "ldexp", "mills", "phi_cdf", "phi_scaled", "refuse_onnx",
           "relu_moments_f64", "safe_ratio"]
