"""Checks of N0..N10 (proofs/norm.md), generic over :class:`LayerSubject` so that ``rln-verify audit``
runs the same checks on anyone's normalization layer."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import mpmath
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from rln_verified import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified._norm_formula import stat_dtype
from rln_verified.verify._core import (
    ALL_DTYPES,
    PSI_REL_ERR,
    Check,
    compute_dtype,
    eps,
    finite_floats,
    log_uniform,
    record_part,
    register,
)
from rln_verified.verify._margins import fold, guarded, has_nan, ratio
from rln_verified.verify._subjects import LayerSubject, NotApplicable

# ---- the formula in float64 (the reference of N2, and the definitions of N0) ---------------------


def pow2_group_scale(amax: torch.Tensor, min_exponent: int) -> torch.Tensor:
    """The exact scale 2^-e per group, with amax = f 2^e (f in [0.5, 1), torch.frexp) and e clamped below at
    ``min_exponent``, so that the scaled group's largest magnitude lies in [0.5, 1) (or below, where clamped). A
    group whose max is 0 or not finite is scaled as a max of 1 would be (by 1/2 unless clamped)."""
    m = torch.where(torch.isfinite(amax) & (amax > 0), amax, torch.ones_like(amax))
    _, e = torch.frexp(m)
    return torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=min_exponent))


def reference_planes(x: torch.Tensor, eps_: float, alpha: float, lam: float | torch.Tensor, bayes: bool,
                     two_d: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (no affine), u and r of the N0 formulas on float64 planes (..., P, L), by the textbook route
    (reflect pad, box means, E[z^2] - E[z]^2 on centred values). Groups are first scaled by a power of two
    (exact) so that no square overflows; eps is scaled with them."""
    x = x.double()
    s = pow2_group_scale(x.abs().amax(dim=(-2, -1), keepdim=True), 0)
    xs = x * s
    # eps s^2 underflows to 0 for groups above ~2^520; clamp it at the smallest normal as the kernel does (N2):
    # a non-constant group has v s^2 >= (2^-53)^2/M there, so the clamp moves v + eps s^2 by < 1e-270 relative,
    # and a constant group has x_c = 0 (y = 0) either way, where 0/0 would otherwise give NaN.
    eps_s = torch.clamp(eps_ * s * s, min=float(torch.finfo(torch.float64).tiny))
    mu = xs.mean((-2, -1), keepdim=True)
    mu = mu + (xs - mu).mean((-2, -1), keepdim=True)  # refinement: exact for constant groups
    xc = xs - mu
    v = (xc * xc).mean((-2, -1), keepdim=True)
    p, l_ = x.shape[-2], x.shape[-1]
    flat = xc.reshape(-1, 1, p, l_)
    if two_d:
        pad = F.pad(flat, (1, 1, 1, 1), mode="reflect")
        k = torch.ones(1, 1, 3, 3, dtype=torch.float64) / 9
    else:
        pad = F.pad(flat, (1, 1, 0, 0), mode="reflect")
        k = torch.ones(1, 1, 1, 3, dtype=torch.float64) / 3
    m1 = F.conv2d(pad, k)
    m2 = F.conv2d(pad * pad, k)
    local = (m2 - m1 * m1).reshape(x.shape)
    nu = local.mean((-2, -1), keepdim=True)
    r = nu / (v + eps_s)
    t = lam * r
    if bayes:
        psi = torch.log1p(t) - t / (1 + t)
        f = torch.exp(alpha * psi)
        u = -torch.expm1(-2 * alpha * psi)
    else:
        f = 1 + t
        u = torch.zeros_like(t)
    return xc / (torch.sqrt(v + eps_s) * f), u, r


def quad_form(p: int, l_: int, two_d: bool) -> torch.Tensor:
    """Q with nu = x^T Q x / M for centred x on a (p, l) plane (N0): Q = diag(w) - B^T B."""
    def box_matrix(n: int) -> torch.Tensor:
        b = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in (i - 1, i, i + 1):
                jj = 1 if j == -1 else (n - 2 if j == n else j)
                b[i, jj] += 1.0 / 3.0
        return b

    bl = box_matrix(l_)
    bp = box_matrix(p) if two_d else torch.eye(p, dtype=torch.float64)
    b = torch.kron(bp, bl)
    w = b.sum(0)
    return torch.diag(w) - b.T @ b


def sharp_ratio_bound(p: int, l_: int, two_d: bool) -> float:
    """Lambda = largest eigenvalue of P Q P (P the centring projection): sup of r over all inputs (N0)."""
    q = quad_form(p, l_, two_d)
    m = q.shape[0]
    if not two_d:
        # Rows are independent windows, but the centring is over the whole group.
        pass
    proj = torch.eye(m, dtype=torch.float64) - torch.full((m, m), 1.0 / m, dtype=torch.float64)
    return float(torch.linalg.eigvalsh(proj @ q @ proj).max())


def reuse_weights(n: int) -> list[float]:
    """w_j = c_j/3: how many times element j appears over the reflect-padded width-3 windows of an axis of
    length n >= 2, divided by 3 (N0). Counted here from the windows, independently of the kernel."""
    counts = [0] * n
    for i in range(n):
        for j in (i - 1, i, i + 1):
            counts[1 if j == -1 else (n - 2 if j == n else j)] += 1
    return [c / 3.0 for c in counts]


def _group_stats() -> Callable[[torch.Tensor, float, bool], dict[str, torch.Tensor]]:
    """The eager kernel's per-group statistics (N0 checks the r it computes)."""
    fn = importlib.import_module("rln_verified._norm_formula").group_stats
    return cast(Callable[[torch.Tensor, float, bool], dict[str, torch.Tensor]], fn)


def closed_ratio_bound(p: int, l_: int, two_d: bool) -> float:
    """c_max/|W|: the largest reuse weight (N0), 4/3 along an axis of length >= 4 (16/9 for 3x3)."""
    wl = max(reuse_weights(l_))
    return wl * (max(reuse_weights(p)) if two_d else 1.0)


def gradient_constant(alpha: float, lambda_max: float, bayes: bool, ratio_bound: float) -> float:
    """K of N3: sqrt(1 + b^2 Lambda^2), b = alpha lambda_max / 4 (Bayesian) or lambda_max (plain), Lambda the
    bound on r (N0: the sharp one, or any larger one such as c_max/|W|)."""
    b = alpha * lambda_max / 4.0 if bayes else lambda_max
    return math.sqrt(1.0 + b * b * ratio_bound * ratio_bound)


# ---- subjects -------------------------------------------------------------------------------------


def _plane_groups_2d(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n * c, h * w)


def _last_groups(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def groups(x: torch.Tensor) -> torch.Tensor:
        m = math.prod(x.shape[x.ndim - k:])
        return x.reshape(-1, m)

    return groups


def rln_info(plane: tuple[int, int], two_d: bool, bayes: bool, *, alpha: float, lambda_max: float) -> dict[str, Any]:
    """The facts the checks need about an R-LayerNorm-formula layer on (P, L) planes (proofs/norm.md)."""
    p, l_ = plane
    lam_sharp = sharp_ratio_bound(p, l_, two_d)
    return {
        "formula": "rln", "centred": True, "alpha": alpha, "lambda_max": lambda_max, "bayes": bayes,
        "two_d": two_d, "plane": (p, l_), "K": gradient_constant(alpha, lambda_max, bayes, lam_sharp),
        "ratio_bound": closed_ratio_bound(p, l_, two_d), "sharp_ratio_bound": lam_sharp,
    }


def _ours(cls: type[nn.Module], two_d: bool, bayes: bool) -> LayerSubject:
    shape = (2, 2, 4, 5) if two_d else (3, 2, 6)
    norm_dims = (4, 5) if two_d else (2, 6)

    def factory(device: torch.device, dtype: torch.dtype) -> nn.Module:
        if two_d:
            return cls(2, device=device, dtype=dtype)
        return cls((2, 6), device=device, dtype=dtype)

    def with_lambda_bounds(device: torch.device, dtype: torch.dtype, lo: float, hi: float) -> nn.Module:
        """The same layer with lambda bounds [lo, hi] (N8); lambda starts at the midpoint."""
        arg: int | tuple[int, int] = 2 if two_d else (2, 6)
        return cls(arg, device=device, dtype=dtype, lambda_min=lo, lambda_max=hi, lambda_init=0.5 * (lo + hi))

    info = rln_info(norm_dims, two_d, bayes, alpha=1.0, lambda_max=1.0)
    info["ours"] = True
    info["with_lambda_bounds"] = with_lambda_bounds
    groups = _plane_groups_2d if two_d else _last_groups(2)
    return LayerSubject(name=cls.__name__, factory=factory, shape=shape, groups=groups, eps=1e-5, info=info)


def our_subjects() -> tuple[LayerSubject, ...]:
    return (
        _ours(RLayerNorm, False, False),
        _ours(BayesianRLayerNorm, False, True),
        _ours(RLayerNorm2d, True, False),
        _ours(BayesianRLayerNorm2d, True, True),
    )


# ---- case strategies ------------------------------------------------------------------------------

_PATTERNS = ("random", "spike", "constant", "alternating", "offset", "ramp")


def _max_abs(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def case_strategy(subject: LayerSubject) -> Callable[[torch.dtype], st.SearchStrategy[Any]]:
    """A case is (pattern, magnitude exponent, offset, seed values): built into an input by :func:`build`."""
    n = math.prod(subject.shape)

    def strategy(dtype: torch.dtype) -> st.SearchStrategy[Any]:
        fi = torch.finfo(dtype)
        emax = int(math.log2(fi.max)) - 1
        emin = int(math.log2(fi.tiny)) - 4
        values = st.lists(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32), min_size=n,
                          max_size=n)
        return st.tuples(st.sampled_from(_PATTERNS), st.integers(min_value=emin, max_value=emax),
                         st.floats(min_value=-1.0, max_value=1.0, width=32), values)

    return strategy


def build(subject: LayerSubject, case: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Input tensor of a case: a pattern in [-1, 1] scaled by 2^e, plus an offset of up to 2^(e+20) (clamped
    to the dtype's range). Pinned examples may pass values outside [-1, 1] with e = 0: they are used as given."""
    pattern, e, offset, vals = case
    n = math.prod(subject.shape)
    base = torch.tensor(list(vals), dtype=torch.float64)
    if pattern == "spike":
        base = torch.zeros(n, dtype=torch.float64)
        base[int(abs(vals[0]) * (n - 1))] = 1.0
    elif pattern == "constant":
        base = torch.full((n,), float(vals[0]), dtype=torch.float64)
    elif pattern == "alternating":
        base = torch.tensor([(-1.0) ** i for i in range(n)], dtype=torch.float64)
    elif pattern == "ramp":
        base = torch.linspace(-1, 1, n, dtype=torch.float64)
    fmax = _max_abs(dtype)
    scale = math.ldexp(1.0, e)
    x = base * scale
    if pattern == "offset":
        x = x + float(offset) * min(scale * 2.0**20, fmax / 4)
    x = torch.clamp(x, -fmax, fmax)
    return x.reshape(subject.shape).to(dtype).to(device)


def _examples(subject: LayerSubject) -> Callable[[torch.dtype], Sequence[Any]]:
    n = math.prod(subject.shape)
    zeros = [0.0] * n

    def examples(dtype: torch.dtype) -> Sequence[Any]:
        emax = int(math.log2(torch.finfo(dtype).max)) - 1
        emin = int(math.log2(torch.finfo(dtype).tiny)) - 4
        out: list[Any] = [
            ("spike", 0, 0.0, zeros), ("constant", 0, 0.0, [0.5] * n), ("alternating", 0, 0.0, zeros),
            ("offset", 0, 1.0, [0.5 * (-1) ** i for i in range(n)]),
            # Shifts of 2^12 and 2^24 times the spread (N4: x + c rounds by ulp(c)/2; 2^24 is float32's last bit).
            ("offset", 12, 0.75, [(-1) ** i * (i + 1) / n for i in range(n)]),
            ("offset", 24, -1.0, [0.5 * (-1) ** i for i in range(n)]),
            ("random", emax, 0.0, [(-1) ** i * (i + 1) / n for i in range(n)]),  # near the dtype's max
            ("random", emin, 0.0, [(-1) ** i * (i + 1) / n for i in range(n)]),  # subnormal
            ("spike", 66, 0.0, zeros) if dtype != torch.float16 else ("spike", 15, 0.0, zeros),  # 1e20 / 65504
            # Inputs of size 2^-24 and 2^-18 against eps = 1e-5: r ~ 1e-9..1e-5, so u ~ 1e-19..1e-11 (N4's relative
            # accuracy of small u).
            ("random", -24, 0.0, [(-1) ** i * (i + 1) / n for i in range(n)]),
            ("random", -18, 0.0, [((i * 7) % 5 - 2) / 2 for i in range(n)]),
        ]
        # torch.nn.functional.layer_norm's float32 failures, tiled over the input.
        for pat in ([1e20, -1e20, 0.0, 3e19], [3e38, -3e38, 0.0, 1.0]):
            v = [pat[i % 4] / 3.5e38 for i in range(n)]
            out.append(("random", 128 if dtype in (torch.float32, torch.float64) else emax, 0.0, v))
        # Fixed stress values, used as given (e = 0): torch's failing float32 rows, a 1e20 spike, 3e38,
        # fp16's max 65504, and a huge offset whose spread is still representable (2^(p-1) ulps of the offset).
        def tile(pat: list[float]) -> list[float]:
            return [pat[i % len(pat)] for i in range(n)]

        if dtype == torch.float16:
            out += [("random", 0, 0.0, tile([65504.0, -65504.0, 0.0, 1.0])), ("constant", 0, 0.0, [65504.0] * n),
                    ("random", 0, 0.0, [65504.0] + [0.0] * (n - 1)), ("random", 0, 0.0, tile([1000.0, 1000.5]))]
        else:
            big = {torch.float64: 1e15, torch.float32: 1e6, torch.bfloat16: 100.0}[dtype]
            out += [("random", 0, 0.0, tile([1e20, -1e20, 0.0, 3e19])),
                    ("random", 0, 0.0, tile([3e38, -3e38, 0.0, 1.0])),
                    ("random", 0, 0.0, [1e20] + [0.0] * (n - 1)), ("constant", 0, 0.0, [3e38] * n),
                    ("random", 0, 0.0, tile([big + 0.5, big - 0.5, big]))]
        return out

    return examples


# ---- running a subject ----------------------------------------------------------------------------


def _module(subject: LayerSubject, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _set_affine(subject.factory(device, dtype), seed)


def _set_affine(mod: nn.Module, seed: int = 0) -> nn.Module:
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name in ("weight", "bias"):  # a non-trivial affine: gamma in [0.5, 2], beta in [-1, 1]
                g = torch.Generator().manual_seed(seed + len(name))
                vals = torch.rand(p.shape, generator=g, dtype=torch.float64)
                p.copy_((0.5 + 1.5 * vals) if name == "weight" else (2 * vals - 1))
    return mod


def _affine(mod: nn.Module, x: torch.Tensor, subject: LayerSubject) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma and beta broadcast to the input and viewed as groups (1 and 0 when the layer has none)."""
    w = getattr(mod, "weight", None)
    b = getattr(mod, "bias", None)
    w = w.detach() if isinstance(w, torch.Tensor) else None
    b = b.detach() if isinstance(b, torch.Tensor) else None
    ones = torch.ones_like(x, dtype=torch.float64)
    if isinstance(mod, RLayerNorm2d | BayesianRLayerNorm2d | nn.GroupNorm) and x.ndim == 4:
        gw = w.double().reshape(1, -1, 1, 1) * ones if isinstance(w, torch.Tensor) else ones
        gb = b.double().reshape(1, -1, 1, 1) * ones if isinstance(b, torch.Tensor) else 0 * ones
    else:
        gw = w.double() * ones if isinstance(w, torch.Tensor) else ones
        gb = b.double() * ones if isinstance(b, torch.Tensor) else 0 * ones
    return subject.groups(gw), subject.groups(gb)


def _output(subject: LayerSubject, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        return subject(mod, x).detach() if not x.requires_grad else subject(mod, x)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise AssertionError(f"{subject.name} raised {type(exc).__name__}: {exc}") from exc


def _attr(mod: nn.Module, name: str) -> torch.Tensor:
    """A tensor attribute of the module (weight, bias, lambda_), detached."""
    val = getattr(mod, name)
    if not isinstance(val, torch.Tensor):
        raise NotApplicable(f"the layer has no tensor attribute {name!r}")
    return val.detach()


def _eps_of(subject: LayerSubject) -> float:
    if subject.eps is None:
        raise NotApplicable("the claim is stated with the layer's eps, which this subject does not give")
    return float(subject.eps)


def group_sigma(xg: torch.Tensor, eps_: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma = sqrt(v + eps), max|x| / sigma) per group of a float64 (G, M) view, without overflow:
    each group is scaled by a power of two first (exact)."""
    s = pow2_group_scale(xg.abs().amax(-1, keepdim=True), -1000)
    xs = xg * s
    mean = xs.mean(-1, keepdim=True)
    mean = mean + (xs - mean).mean(-1, keepdim=True)  # refinement: exact for constant groups (x_c = 0, v = 0)
    xc = xs - mean
    v_s = (xc * xc).mean(-1, keepdim=True)
    # Large groups (s <= 1): sigma = sqrt(v_s + eps s^2)/s. Tiny groups (s > 1): v = v_s/s^2 may underflow,
    # which is harmless because eps then dominates.
    sigma = torch.where(s <= 1, torch.sqrt(v_s + eps_ * s * s) / s, torch.sqrt(v_s / (s * s) + eps_))
    ratio = (xs.abs().amax(-1, keepdim=True) / s) / sigma
    return sigma, ratio


# ---- N0: the noise ratio bound ------------------------------------------------------------------


def _n0(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if not info.get("ours"):
            raise NotApplicable("N0 is about the noise ratio r of the R-LayerNorm layers")
        group_stats = _group_stats()

        x = build(subject, case, device, dtype)
        p, l_ = info["plane"]
        planes = x.to(compute_dtype(dtype)).reshape(-1, p, l_)
        r = group_stats(planes, float(subject.eps or 1e-5), info["two_d"])["r"].double().cpu()
        if has_nan(r) or not torch.isfinite(r).all() or (r < 0).any():
            return math.inf
        # r is computed with absolute error <= (2 log2 M + 8) u_c (proofs/norm.md, N0), so the exact bound
        # Lambda is met up to that.
        m = p * l_
        slack = (2 * math.log2(m) + 8) * eps(compute_dtype(dtype)) / 2
        return ratio(fold(r), float(info["sharp_ratio_bound"]) + slack)

    return run


# ---- N1: output bound --------------------------------------------------------------------------------


def _n1(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        mod = _module(subject, device, dtype)
        x = build(subject, case, device, dtype)
        y = _output(subject, mod, x).double().cpu()
        if has_nan(y) or not torch.isfinite(y).all():
            return math.inf
        gw, gb = _affine(mod, x, subject)
        yg = subject.groups(y)
        m = yg.shape[-1]
        # A centred group has |x_c,i| <= sqrt(M-1) sigma; a layer that does not centre (RMSNorm) only has
        # |x_i| <= sqrt(M) rms. Rounding slack: y = x_c a w + b takes <= 8 roundings in the compute dtype
        # after x_c, each relative u_c on a value <= sqrt(M-1)|gamma|; storage rounding adds u_d |y|.
        uc, ud = eps(compute_dtype(dtype)) / 2, eps(dtype) / 2
        c = math.sqrt(m - 1) if subject.info.get("centred", True) else math.sqrt(m)
        bound = gw.abs() * c * (1 + 16 * uc + ud) + gb.abs() * (2 * ud)
        return fold((yg - gb).abs() / bound)

    return run


# ---- N2: finite and accurate at every magnitude ----------------------------------------------------


def n2_tolerance(x64: torch.Tensor, ref_y: torch.Tensor, m: int, alpha: float, dtype: torch.dtype,
                 eps_: float) -> torch.Tensor:
    """Per-element absolute tolerance of N2 (before gamma), from proofs/norm.md:
    u_c [(log2 M + 4) A/sigma + (3(1+alpha) log2 M + 24)(1 + |y|)] + u_d |y|, with A = max|x| of the group:
    rounding x and mu moves x_c by u_c A per operation, which is A/sigma in the output's units."""
    uc, ud = eps(compute_dtype(dtype)) / 2, eps(dtype) / 2
    lg = math.log2(max(m, 2))
    _, ratio = group_sigma(x64, eps_)
    return uc * ((lg + 4) * ratio + (3 * (1 + alpha) * lg + 24) * (1 + ref_y.abs())) + ud * ref_y.abs()


def plain_reference(xg: torch.Tensor, eps_: float, centred: bool) -> torch.Tensor:
    """LayerNorm (``centred``) or RMSNorm of the float64 groups (G, M), without affine, without overflow:
    each group is scaled by a power of two first (exact), and eps with it (clamped at the smallest normal,
    as in :func:`reference_planes`)."""
    s = pow2_group_scale(xg.abs().amax(-1, keepdim=True), 0)  # scale large groups down only; eps dominates tiny
    xs = xg * s
    if centred:
        mu = xs.mean(-1, keepdim=True)
        xs = xs - (mu + (xs - mu).mean(-1, keepdim=True))
    eps_s = torch.clamp(eps_ * s * s, min=float(torch.finfo(torch.float64).tiny))
    return xs / torch.sqrt((xs * xs).mean(-1, keepdim=True) + eps_s)


def _lambda_of(mod: nn.Module, info: dict[str, Any]) -> float:
    get = info.get("lambda_of")
    return float(get(mod)) if get is not None else float(_attr(mod, "lambda_").double())


def _n2(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        formula = info.get("formula")
        if formula not in ("rln", "layernorm", "rmsnorm"):
            raise NotApplicable("N2 compares with the layer's formula in float64, and this layer's formula is not "
                                "known (known: LayerNorm, GroupNorm, RMSNorm, the R-LayerNorm layers)")
        eps_ = _eps_of(subject)
        mod = _module(subject, device, dtype)
        x = build(subject, case, device, dtype)
        y = _output(subject, mod, x).double().cpu()
        if has_nan(y) or not torch.isfinite(y).all():
            return math.inf
        xg = subject.groups(x.double().cpu())
        if formula == "rln":
            p, l_ = info["plane"]
            ref, _, _ = reference_planes(x.double().cpu().reshape(-1, p, l_), eps_, info["alpha"],
                                         _lambda_of(mod, info), info["bayes"], info["two_d"])
            ref_y = subject.groups(ref.reshape(x.shape))
            alpha = info["alpha"]
        else:
            ref_y = plain_reference(xg, eps_, centred=formula == "layernorm")
            alpha = 0.0
        gw, gb = _affine(mod, x, subject)
        yg = subject.groups(y)
        tol = n2_tolerance(xg, ref_y, yg.shape[-1], alpha, dtype, eps_)
        if dtype == torch.float64:
            tol = 2 * tol  # the float64 reference carries the same kind of rounding as the kernel
        err = (yg - (gw * ref_y + gb)).abs() / (gw.abs() * tol + gb.abs() * eps(dtype))
        return guarded(err, ref_y)

    return run


# ---- N3: bounded gradient ------------------------------------------------------------------------------

_NEEDS_K = ("{claim} is stated with the layer's eps and its gradient constant K (known for torch's LayerNorm, "
            "GroupNorm and RMSNorm and for the R-LayerNorm layers; give it with --gradient-constant)")
_NOT_CENTRED = "{claim} follows from centring, and this layer does not centre its groups (e.g. RMSNorm)"


def n3_slack(m: int, dtype: torch.dtype) -> float:
    """Relative error bound of the computed Jacobian's 2-norm (N3): it is computed in the compute dtype, relative
    error <= 64 M u_c, and each entry is stored in the dtype, which moves its 2-norm by <= sqrt(M) u_d."""
    return (1 + 64 * m * eps(compute_dtype(dtype)) / 2) * (1 + math.sqrt(m) * eps(dtype) / 2)


def _n3(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    """The margin of N3 is its tightness: ||dy/dx||_2 sqrt(v + eps) / (K max|gamma|), per group, with the
    computed Jacobian's 2-norm divided by its rounding slack. So it never exceeds the exact ratio / K (it is a
    certified lower bound on the tightness of K), and it is <= 1 whenever the theorem holds; the worst margin
    of a run is the best ratio found divided by K."""
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if "K" not in info or subject.eps is None:
            raise NotApplicable(_NEEDS_K.format(claim="N3"))
        mod = _module(subject, device, dtype)
        x = build(subject, case, device, dtype)
        if not torch.isfinite(x).all():
            return 0.0
        jac = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
            lambda t: _output(subject, mod, t), x
        )
        n = x.numel()
        jac = jac.reshape(n, n).double().cpu()
        if has_nan(jac) or not torch.isfinite(jac).all():
            return math.inf
        idx = subject.groups(torch.arange(n).reshape(subject.shape))
        xg = subject.groups(x.double().cpu())
        gw, _ = _affine(mod, x, subject)
        worst = 0.0
        m = idx.shape[1]
        slack = n3_slack(m, dtype)
        for g in range(idx.shape[0]):
            block = jac[idx[g]][:, idx[g]]
            sigma = float(group_sigma(xg[g : g + 1], subject.eps)[0])
            norm = float(torch.linalg.matrix_norm(block, ord=2))
            worst = fold(worst, norm * sigma / (info["K"] * float(gw[g].abs().max()) * slack))
            if bool((xg[g] == xg[g][0]).all()):
                # The other side: a constant group has v = 0, x_c = 0, r = 0, f = 1, so its Jacobian is exactly
                # diag(gamma) P / sqrt(eps) (N3), of norm ||diag(gamma) P||_2 / sqrt(eps); the computed one is within
                # N3's rounding slack of it, at every magnitude. (A kernel that loses 1/sqrt(eps) at a huge constant
                # group, where eps s^2 underflows its scalar dtype, gives s/sqrt(tiny) here instead of 316.2.)
                proj = torch.eye(m, dtype=torch.float64) - 1.0 / m
                exact = float(torch.linalg.matrix_norm(torch.diag(gw[g]) @ proj, ord=2)) / math.sqrt(subject.eps)
                if not abs(norm - exact) <= (slack - 1.0) * exact:
                    return math.inf
        return worst

    return run


# ---- N4 / N5: shift and scale invariance --------------------------------------------------------------

#: PSI-3: relative error of psi in the dtype it is evaluated in (the kernel's per-group scalar dtype).


def _u_rounding(xg: torch.Tensor, eps_: float, m: int, alpha: float, lam: float, lam_sharp: float,
                lam_closed: float, dtype: torch.dtype) -> torch.Tensor:
    """Per-group bound on |u_computed - u(x)| for one evaluation (N4, proofs/norm.md).

    |du/dr| = 2 alpha lambda psi'(t) exp(-2 alpha psi) <= alpha lambda / 2 (psi' <= 1/4, PSI-4), and r carries
    (i) the centring error of x_c, <= (log2 M + 3) u_c A per element (N2), times ||grad r|| <= Lambda/(sqrt(M)
    sigma): Lambda (log2 M + 3) u_c A/sigma; (ii) the rounding of its sums, <= (2 log2 M + 8) u_c c_max/|W| (N0),
    and of the division, 2 u_c r <= 2 u_c c_max/|W|. After r, the kernel works in its per-group scalar dtype
    (``_norm_formula.stat_dtype``: float64 for float32 planes): t = lambda r and 2 alpha psi round once each (a relative
    error d of t moves u by <= 2 alpha t psi'(t) d <= 2 alpha d), psi has relative error eps_psi (PSI-3), which
    moves u by <= eps_psi u (z/(e^z - 1) <= 1), and expm1 adds 2 u_s; u is then cast to the compute dtype and
    to the storage dtype (u_c + u_d)."""
    cd = compute_dtype(dtype)
    sd = stat_dtype(cd)
    uc, ud, us = eps(cd) / 2, eps(dtype) / 2, eps(sd) / 2
    lg = math.log2(max(m, 2))
    _, ratio = group_sigma(xg, eps_)
    err_r = lam_sharp * (lg + 3) * uc * ratio + lam_closed * (2 * lg + 10) * uc
    return (alpha * lam / 2) * err_r + (4 * alpha + 4) * us + PSI_REL_ERR[sd] + uc + ud


def invariance_margins(subject: LayerSubject, kind: str, case: Any, device: torch.device,
                       dtype: torch.dtype) -> dict[str, float]:
    """The margins of N4 (``kind="N4"``) or N5 on one case: ``{"y": ...}``, and for N4 on the Bayesian layers
    also ``{"u": ...}``. Each is |difference| / derived tolerance (proofs/norm.md, N4 and N5)."""
    info = subject.info
    _pattern, e, offset, vals = case
    if kind == "N4" and not info.get("centred", True):
        raise NotApplicable(_NOT_CENTRED.format(claim="N4"))
    if subject.eps is None or "K" not in info:
        raise NotApplicable(_NEEDS_K.format(claim=kind))
    mod = _module(subject, device, dtype)
    # Keep magnitudes moderate so that v >> eps (the theorem's assumption for N5) and x + c is finite.
    x = build(subject, ("random", 0, 0.0, vals), device, dtype)
    x64 = x.double().cpu()
    a = 2.0 ** max(min(e, 8), -8) * (1 + 0.5 * abs(float(offset)))
    if kind == "N4":
        # |c| up to 2^24 |x| (fp16: 2^12, so that x + c stays finite); the tolerance grows with ulp(|c|).
        fmax_e = int(math.log2(float(torch.finfo(dtype).max)))
        c = float(offset) * 2.0 ** min(e, 24, fmax_e - 3)
        x2 = x + c
    else:
        x2 = x * a
    y1 = _output(subject, mod, x).double().cpu()
    y2 = _output(subject, mod, x2).double().cpu()
    if has_nan(y1, y2) or not (torch.isfinite(y1).all() and torch.isfinite(y2).all()):
        return {"y": math.inf}
    gw, gb = _affine(mod, x, subject)
    xg = subject.groups(x64)
    m = xg.shape[-1]
    v = xg.var(-1, unbiased=False, keepdim=True)
    uc = eps(compute_dtype(dtype)) / 2
    x2g = subject.groups(x2.double().cpu())
    # Rounding x + c (or a x) moves each element by <= u_d |result|: a perturbation delta with ||delta|| <=
    # sqrt(M) u_d max|x + c|. Along the segment it spans, sqrt(v) >= sqrt(v(x)) - ||delta||/sqrt(M)
    # (sqrt(v) = ||P z||/sqrt(M) is 1/sqrt(M)-Lipschitz), so sigma stays >= sigma_lo, and the output moves by
    # <= K |gamma| ||delta|| / sigma_lo (N3, mean value theorem). Each evaluation carries its own N2 error,
    # with its own A = max|x| (for x + c that is max|x + c|).
    ud = eps(dtype) / 2
    step = ud * x2g.abs().amax(-1, keepdim=True)  # ||delta|| / sqrt(M)
    pert = step * math.sqrt(m)
    if kind == "N5":
        pert = pert / a  # the rounding of a x, in the units of x
        step = step / a
        # y(a x; eps) = y(x; eps / a^2), and |dz/deps| <= sqrt(M-1)(1/2 + b Lambda)/(v + eps') between the two
        # eps (N5); b Lambda = sqrt(K^2 - 1) with K of N3 (0 for a plain LayerNorm, K = 1).
        b_lam = math.sqrt(max(info["K"] ** 2 - 1.0, 0.0))
        eps_lo = subject.eps * min(1.0, 1.0 / (a * a))
        eps_shift = math.sqrt(m - 1) * (0.5 + b_lam) * subject.eps * abs(1 - 1 / (a * a)) / (v + eps_lo)
    else:
        eps_shift = torch.zeros_like(v)
    sigma_lo = torch.sqrt((v.sqrt() - step).clamp_min(0.0) ** 2 + subject.eps)
    ref = subject.groups(y1)
    alpha = info.get("alpha", 1.0)
    yh = (ref - gb) / gw
    n2_x = n2_tolerance(xg, yh, m, alpha, dtype, subject.eps)
    n2_x2 = n2_tolerance(x2g, yh, m, alpha, dtype, subject.eps)
    tol = info["K"] * pert / sigma_lo + n2_x + n2_x2 + eps_shift + 8 * uc
    out = {"y": fold((subject.groups(y2) - ref).abs() / (gw.abs() * tol))}
    if kind == "N4" and isinstance(mod, BayesianRLayerNorm | BayesianRLayerNorm2d):
        # u(x + c) = u(x): u depends on x only through r, and |u(z) - u(x)| <= (alpha lambda/2) |r(z) - r(x)|
        # with ||grad r|| <= Lambda/(sqrt(M) sigma) (N4): the shift's rounding moves u by <= (alpha lambda/2)
        # Lambda u_d max|x + c| / sigma_lo; each evaluation adds its own rounding (:func:`_u_rounding`).
        lam = _lambda_of(mod, info)
        with torch.no_grad():
            u1 = mod(x, return_uncertainty=True)[1].double().cpu().reshape(-1, 1)
            u2 = mod(x2, return_uncertainty=True)[1].double().cpu().reshape(-1, 1)
        lam_s, lam_c = float(info["sharp_ratio_bound"]), float(info["ratio_bound"])
        tol_u = ((alpha * lam / 2) * lam_s * step / sigma_lo
                 + _u_rounding(xg, subject.eps, m, alpha, lam, lam_s, lam_c, dtype)
                 + _u_rounding(x2g, subject.eps, m, alpha, lam, lam_s, lam_c, dtype))
        if not (torch.isfinite(u1).all() and torch.isfinite(u2).all()):
            out["u"] = math.inf
        else:
            out["u"] = fold((u2 - u1).abs() / tol_u)
        # Relative accuracy of u at the case's magnitude 2^e (tiny inputs make u tiny).
        fmax_e = int(math.log2(float(torch.finfo(dtype).max)))
        x_e = build(subject, ("random", min(e, fmax_e - 2), 0.0, vals), device, dtype)
        out["u_rel"] = u_relative_margin(subject, mod, x_e, dtype)
    return {k: fold(v) for k, v in out.items()}


def _box_counts(n: int) -> list[list[int]]:
    """B_int with B = B_int/3: row i counts the reflect-padded width-3 window of element i (N0), exact integers."""
    b = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in (i - 1, i, i + 1):
            b[i][1 if j == -1 else (n - 2 if j == n else j)] += 1
    return b


def exact_quad_form(p: int, l_: int, two_d: bool) -> tuple[list[list[int]], int]:
    """(Q_int, c^2) with Q = Q_int / c^2 exactly (N0: nu = x^T Q x / M for centred x, Q = diag(w) - B^T B), B = B_int/c,
    c = 9 (3x3) or 3; :func:`quad_form` is its float64 rounding."""
    bl = torch.tensor(_box_counts(l_), dtype=torch.int64)
    bp = torch.tensor(_box_counts(p), dtype=torch.int64) if two_d else torch.eye(p, dtype=torch.int64)
    b = torch.kron(bp, bl)
    c = 9 if two_d else 3
    q = c * torch.diag(b.sum(0)) - b.T @ b
    return q.tolist(), c * c


def u_exact(xg: list[float], q_int: list[list[int]], c2: int, eps_: float, lam: float,
            alpha: float) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """(U, nu, v) of one group in mpmath (50 digits beyond psi's cancellation): U = -expm1(-2 alpha psi(lam r)),
    r = nu/(v + eps), from the exact centred values (N0)."""
    with mpmath.workdps(60):
        xs = [mpmath.mpf(v) for v in xg]
        m = len(xs)
        mean = mpmath.fsum(xs) / m
        xc = [v - mean for v in xs]
        v = mpmath.fsum(z * z for z in xc) / m
        nu = mpmath.fsum(q_int[i][j] * xc[i] * xc[j] for i in range(m) for j in range(m) if q_int[i][j]) / (c2 * m)
        nu = max(nu, mpmath.mpf(0))
        t = mpmath.mpf(lam) * nu / (v + mpmath.mpf(eps_))
    if t == 0:
        return mpmath.mpf(0), nu, v
    extra = int(2 * abs(mpmath.log10(t))) + 10
    with mpmath.workdps(60 + extra):
        psi = mpmath.log1p(t) - t / (1 + t)
        return +(-mpmath.expm1(-2 * mpmath.mpf(alpha) * psi)), nu, v


def u_relative_bound(nu: mpmath.mpf, v: mpmath.mpf, a_max: float, eps_: float, m: int, lam_sharp: float,
                     lam_closed: float, fused: bool, dtype: torch.dtype) -> float:
    """N4 (relative accuracy of one evaluation of u, proofs/norm.md): |u - U(lambda r)| <= e_rel U with
    e_rel = 2 (rho_r + u_s) + eps_psi + 4 u_s + e_cast and, u_x the unit roundoff of x_c and its sums (the compute
    dtype on the eager path, float64 in the fused kernel, N11),
    rho_r = (M + 16) u_x 2 (c_max/|W|) v/nu + u_x + (M + 4) u_x + 2 (M + 3) u_x A (sqrt(Lambda/nu) + 1/sigma)."""
    cd = compute_dtype(dtype)
    sd = torch.float64  # the stated per-group scalar dtype for every compute dtype (N2, N4), not read from the kernel
    ux = eps(torch.float64 if fused else cd) / 2
    us = eps(sd) / 2
    if nu <= 0:
        return math.inf
    with mpmath.workdps(30):  # scale-free ratios (the group may be near the dtype's max)
        v_nu = float(v / nu)
        a_terms = float(mpmath.mpf(a_max) * (mpmath.sqrt(lam_sharp / nu) + 1 / mpmath.sqrt(v + mpmath.mpf(eps_))))
    rho_r = (m + 16) * ux * 2 * lam_closed * v_nu + ux + (m + 4) * ux + 2 * (m + 3) * ux * a_terms
    e_cast = (eps(cd) / 2 if sd != cd else 0.0) + (eps(dtype) / 2 if cd != dtype else 0.0)
    return 2 * (rho_r + us) + PSI_REL_ERR[sd] + 4 * us + e_cast


def u_relative_margin(subject: LayerSubject, mod: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    """The relative part of N4's u bound on one input: max over groups of |u - U(lambda r)| / (e_rel U), U from the
    exact centred values in mpmath; where U is below the normal range, u must be in [0, tiny]. Small u (tiny inputs,
    eps-dominated r) is where an absolute bound says nothing: u ~ (lambda r)^2 can be 1e-19 and must still be right
    to a few ulps (a 1 - exp(-z) form returns 0 there, a direct-form psi loses digits)."""
    info = subject.info
    p, l_ = info["plane"]
    q_int, c2 = exact_quad_form(p, l_, info["two_d"])
    lam, alpha = _lambda_of(mod, info), float(info["alpha"])
    fused = dtype == torch.float32 and x.device.type == "cpu" and _native_ready()
    with torch.no_grad():
        u = mod(x, return_uncertainty=True)[1].double().cpu().reshape(-1)
    xg = subject.groups(x.double().cpu())
    if has_nan(u) or u.numel() != xg.shape[0]:
        return math.inf
    tiny = float(torch.finfo(dtype).tiny)
    margins: list[float] = []
    for g in range(xg.shape[0]):
        row = xg[g].tolist()
        big_u, nu, v = u_exact(row, q_int, c2, float(subject.eps or 0.0), lam, alpha)
        got = float(u[g])
        if big_u < tiny:
            margins.append(0.0 if 0.0 <= got <= tiny else math.inf)
            continue
        a_max = max(abs(z) for z in row)
        bound = u_relative_bound(nu, v, a_max, float(subject.eps or 0.0), len(row), float(info["sharp_ratio_bound"]),
                                 float(info["ratio_bound"]), fused, dtype)
        margins.append(ratio(abs(mpmath.mpf(got) - big_u) / big_u, bound))
    return fold(margins)


def _native_ready() -> bool:
    from rln_verified._native import rnorm

    return bool(rnorm.available())


def _invariance(subject: LayerSubject, kind: str) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        # The margin is the worst of the parts (y, u); each part's worst goes to the result's extra["parts"].
        parts = invariance_margins(subject, kind, case, device, dtype)
        for k, v in parts.items():
            record_part(k, v)
        return fold(list(parts.values()))

    return run


# ---- N6: alpha = 0 reduces to LayerNorm / GroupNorm ---------------------------------------------------


def _n6(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if not (info.get("ours") and info.get("bayes")):
            raise NotApplicable("N6 is about the Bayesian layers at alpha = 0")
        mod = _module(subject, device, dtype)
        mod.alpha = 0.0  # type: ignore[assignment]
        x = build(subject, ("random", 0, 0.0, case[3]), device, dtype)
        y = _output(subject, mod, x).double().cpu()
        w = _attr(mod, "weight")
        b = _attr(mod, "bias")
        if info["two_d"]:
            ref = F.group_norm(x.double(), x.shape[1], w.double(), b.double(), _eps_of(subject)).cpu()
        else:
            ref = F.layer_norm(x.double(), (2, 6), w.double(), b.double(), _eps_of(subject)).cpu()
        gw, gb = _affine(mod, x, subject)
        m = subject.groups(x).shape[-1]
        tol = n2_tolerance(subject.groups(x.double().cpu()), (subject.groups(ref) - gb) / gw, m, 0.0, dtype,
                           _eps_of(subject))
        # Storing y in the dtype rounds beta too: + u_d |beta|.
        den = gw.abs() * tol + gb.abs() * eps(dtype) / 2 + 1e-300
        return guarded((subject.groups(y) - subject.groups(ref)).abs() / den, y, ref)

    return run


# ---- N7: noise monotonicity -------------------------------------------------------------------------


def _n7(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if not (info.get("ours") and info.get("bayes")):
            raise NotApplicable("N7 is about the Bayesian layers' u")
        mod = _module(subject, device, dtype)
        x = build(subject, ("random", 0, 0.0, case[3]), device, dtype)
        with torch.no_grad():
            y, u = mod(x, return_uncertainty=True)
        u = u.double().cpu().flatten()
        if not ((u >= 0).all() and (u < 1).all()):
            return math.inf
        # sigma_eff >= sigma: |y - beta| <= |gamma| |x_c|/sigma elementwise.
        p, l_ = info["plane"]
        _ref_y, _ref_u, r = reference_planes(x.double().cpu().reshape(-1, p, l_), _eps_of(subject), info["alpha"],
                                             float(_attr(mod, "lambda_").double()), True, info["two_d"])
        xg = subject.groups(x.double().cpu())
        xc = xg - xg.mean(-1, keepdim=True)
        sigma = torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + _eps_of(subject))
        gw, gb = _affine(mod, x, subject)
        lhs = (subject.groups(y.double().cpu()) - gb).abs()
        rhs = gw.abs() * xc.abs() / sigma
        uc = eps(compute_dtype(dtype)) / 2
        # y is rounded next to beta, so y - beta carries up to u_d |y| <= u_d (|beta| + |gamma| sqrt(M)).
        slack = eps(dtype) * (gb.abs() + gw.abs() * math.sqrt(xg.shape[-1]) * 1e-300)
        margin = guarded(lhs / (rhs * (1 + 16 * uc + eps(dtype)) + slack + 1e-300), y, r)
        # u nondecreasing in r: sort groups by r, u must follow (up to its rounding 8 u_c).
        order = torch.argsort(r.flatten())
        us = u[order]
        drops = (us[:-1] - us[1:]).clamp_min(0.0)
        return fold(margin, drops / (8 * uc + eps(dtype)))

    return run


# ---- N8: lambda bounded and alive ------------------------------------------------------------------------


def lambda_range(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float]:
    """Where the computed lambda = lo + (hi - lo)(1 + sin raw)/2 lies for every finite raw (N8): [lo, hi] in
    exact arithmetic; in the parameter's dtype [lo (1 - u_d)^2, hi (1 + u_d)^5] (proofs/norm.md, N8)."""
    ud = eps(dtype) / 2
    return lo * (1 - ud) ** 2, hi * (1 + ud) ** 5


def _n8_cases(subject: LayerSubject) -> Callable[[torch.dtype], st.SearchStrategy[Any]]:
    """A case: the raw parameter, the bounds, an input (pattern, exponent, values) and SGD steps (lr, seed)."""
    n = math.prod(subject.shape)

    def strategy(dtype: torch.dtype) -> st.SearchStrategy[Any]:
        near_zero_of_cos = st.builds(lambda k, d: (k + 0.5) * math.pi + d, st.integers(-10_000, 10_000),
                                     st.floats(-1e-3, 1e-3))
        raw = st.one_of(finite_floats(dtype), near_zero_of_cos, st.floats(-10.0, 10.0))
        values = st.lists(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32), min_size=n,
                          max_size=n)
        return st.fixed_dictionaries({
            "raw": raw, "lo": st.one_of(st.just(0.0), log_uniform(1e-4, 0.5)), "width": log_uniform(1e-3, 4.0),
            "pattern": st.sampled_from(("random", "spike", "alternating", "ramp")), "e": st.integers(-12, 8),
            "vals": values,
            "steps": st.lists(st.tuples(log_uniform(1e-2, 1e6), st.integers(0, 2**16)), max_size=3),
        })

    return strategy


def _n8_examples(subject: LayerSubject) -> Callable[[torch.dtype], Sequence[Any]]:
    n = math.prod(subject.shape)

    def examples(dtype: torch.dtype) -> Sequence[Any]:
        base = {"raw": 0.0, "lo": 1e-3, "width": 0.999, "pattern": "random", "e": 0,
                "vals": [(-1) ** i * (i + 1) / n for i in range(n)], "steps": []}
        big = {torch.float64: 1e300, torch.float32: 1e30, torch.float16: 65504.0, torch.bfloat16: 3e38}[dtype]
        return [
            {**base, "raw": math.pi / 2},  # lambda at lambda_max, cos(raw) at its smallest near 0
            {**base, "raw": -math.pi / 2, "lo": 0.0, "width": 1.0},  # lambda at lambda_min = 0
            {**base, "raw": math.pi / 2, "lo": 0.01, "width": 0.89},  # bfloat16: fl(0.9) + 1 ulp (measured)
            {**base, "raw": big},  # a huge raw: sin and cos after argument reduction
            {**base, "steps": [(1e6, 1), (1e6, 2), (1e6, 3)]},  # the lr = 1e6
            {**base, "lo": 0.5, "width": 1e-3, "pattern": "ramp", "steps": [(1e2, 4)]},  # narrow range, small r
        ]

    return examples


def _n8_margin(subject: LayerSubject, mod: nn.Module, x: torch.Tensor, lo: float, hi: float,
               dtype: torch.dtype) -> float:
    """Where lambda lies: |2(lambda - lo)/(hi - lo) - 1|/2 in [0, 1/2] inside [lo, hi]; 1/2 plus half the excess
    over the rounding allowance of :func:`lambda_range` beyond it (so <= 1 inside the derived range); inf if the
    gradient wrt raw is 0 or of the wrong sign where the exact one is a normal float of the dtype by a factor 16.
    It grows continuously towards the bounds, where cos(raw) -> 0, so target() drives the search there."""
    info = subject.info
    lo_b, hi_b = lambda_range(lo, hi, dtype)
    lam = float(_attr(mod, "lambda_").double())
    if not math.isfinite(lam):
        return math.inf
    if lam > hi:
        pos = 0.5 + 0.5 * (lam - hi) / (hi_b - hi)
    elif lam < lo:
        pos = 0.5 + 0.5 * (lo - lam) / (lo - lo_b) if lo > lo_b else math.inf
    else:
        pos = 0.5 * abs(2 * (lam - lo) / (hi - lo) - 1)
    raw = _raw_param(mod)
    # L = |y - beta|^2 / 2 (beta = 0 here): dL/dlambda = -sum gamma^2 xh^2 r f'(t)/f^3, a sum of terms of one
    # sign, nonzero when some group has r > 0 and x_c != 0 (N8), so no cancellation can hide a dead gradient.
    y = subject(mod, x)
    (grad,) = torch.autograd.grad(0.5 * y.double().square().sum(), raw)
    g = float(grad.double())
    p, l_ = info["plane"]
    lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    x64 = x.detach().double().cpu()
    ref, _, _ = reference_planes(x64.reshape(-1, p, l_), _eps_of(subject), info["alpha"], lam_t, info["bayes"],
                                 info["two_d"])
    gw, _ = _affine(mod, x, subject)
    loss_ref = 0.5 * (gw * subject.groups(ref.reshape(x.shape))).square().sum()
    (dl_dlam,) = torch.autograd.grad(loss_ref, lam_t)
    g_ref = float(dl_dlam) * (hi - lo) / 2 * math.cos(float(raw.detach().double()))
    # The computed gradient is a product of the same few factors, each rounded with relative error far below
    # 1/2 in every dtype (a sum of one-signed terms, faithful cos), so it cannot be 0 or change sign unless it
    # underflows; 16 max(1, c) tiny keeps every factor (|dL/dlambda| >= |g|/c, |cos| <= 1) normal (N8).
    c = (hi - lo) / 2
    if has_nan(g, g_ref):
        return math.inf  # a NaN gradient is dead whatever the sign of the true one
    if abs(g_ref) >= 16 * max(1.0, c) * float(torch.finfo(dtype).tiny) and not (g != 0.0 and (g > 0) == (g_ref > 0)):
        return math.inf
    return fold(pos)


def _raw_param(mod: nn.Module) -> nn.Parameter:
    raw = getattr(mod, "lambda_raw", None)
    if not isinstance(raw, nn.Parameter):
        raise NotApplicable("the layer has no lambda_raw parameter (N8)")
    return raw


def _n8(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        make = info.get("with_lambda_bounds")
        if make is None:
            raise NotApplicable("N8 is about the R-LayerNorm layers' bounded lambda parameterization")
        lo = float(case["lo"])
        hi = lo + float(case["width"])
        mod = _set_affine(make(device, dtype, lo, hi))
        raw = _raw_param(mod)
        bias = getattr(mod, "bias", None)
        with torch.no_grad():
            if isinstance(bias, torch.Tensor):
                bias.zero_()
            raw.fill_(float(case["raw"]))
        if not bool(torch.isfinite(raw)):
            return 0.0  # the raw value is not a finite float of the dtype: outside N8's assumption
        x = build(subject, (case["pattern"], case["e"], 0.0, case["vals"]), device, dtype)
        worst = _n8_margin(subject, mod, x, lo, hi, dtype)
        for lr, seed in case["steps"]:
            # An arbitrary training signal (random-sign weights on y), then one SGD step raw -= lr * grad.
            g = torch.Generator().manual_seed(int(seed))
            w = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device)
            (grad,) = torch.autograd.grad((subject(mod, x).double() * w).sum(), raw)
            with torch.no_grad():
                raw.sub_(float(lr) * grad)
            if not bool(torch.isfinite(raw)):
                break  # the step overflowed raw (float16): outside N8's assumption, nothing more to check
            worst = fold(worst, _n8_margin(subject, mod, x, lo, hi, dtype))
        return worst

    return run


# ---- N9: batch isolation ------------------------------------------------------------------------------


def _n9(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        mod = _module(subject, device, dtype)
        x = build(subject, case, device, dtype).detach()
        poison = float("nan") if case[2] >= 0 else float("inf")
        x2 = x.clone()
        x2[0] = poison
        x1r = x.clone().requires_grad_()
        x2r = x2.clone().requires_grad_()
        y1 = _output(subject, mod, x1r)
        y2 = _output(subject, mod, x2r)
        (g1,) = torch.autograd.grad(y1[1:].sum(), x1r)
        (g2,) = torch.autograd.grad(y2[1:].sum(), x2r)
        # Our layers give finite outputs and gradients for finite input (N2): a NaN in the clean run is a violation.
        # Anyone's layer (rln-verify audit) may produce NaN for a sample of its own; N9 then asks only that the
        # poisoned run repeats it exactly. Sample 0 holds the poison: no other sample's output or gradient may change
        # at all (bit-exact, NaN exactly where the clean run has it).
        if subject.info.get("ours") and has_nan(y1, g1):
            return math.inf
        same = _same_values(y1[1:].detach(), y2[1:].detach()) and _same_values(g1[1:], g2[1:])
        return 0.0 if same else math.inf

    return run


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality with NaN in the same places (a NaN that appears or disappears is a difference)."""
    na, nb = torch.isnan(a), torch.isnan(b)
    return bool(torch.equal(na, nb)) and bool(torch.equal(a[~na], b[~nb]))


# ---- N10: sum invariant ----------------------------------------------------------------------------------


def _n10(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if not subject.info.get("centred", True):
            raise NotApplicable(_NOT_CENTRED.format(claim="N10"))
        mod = _module(subject, device, dtype)
        with torch.no_grad():
            for name, p in mod.named_parameters():
                if name == "weight":
                    p.fill_(1.5)  # constant gamma
        x = build(subject, ("random", 0, 0.0, case[3]), device, dtype).requires_grad_()
        y = _output(subject, mod, x)
        (g,) = torch.autograd.grad(y.sum(), x)
        g = subject.groups(g.double().cpu())
        xg = subject.groups(x.detach().double().cpu())
        sigma, a_over_sigma = group_sigma(xg, subject.eps or 0.0)
        m = g.shape[-1]
        # Exact value 0; each entry is a sum of O(M) terms of size <= 1.5 K / sigma, rounded with u_c each.
        # The computed x_c also carries the centring error (log2 M + 3) u_c A (N2), so its computed sum is not 0:
        # that leaves a term xh mean(x_c)/sigma of size <= sqrt(M) (log2 M + 3) u_c (A/sigma) / sigma per entry,
        # once through xh and once through the r-term (factor 2).
        uc = eps(compute_dtype(dtype)) / 2
        k = subject.info.get("K", 1.0)
        tol = 1.5 * k / sigma * uc * ((4 * m + 16) + 2 * math.sqrt(m) * (math.log2(m) + 3) * a_over_sigma)
        return fold(g.abs() / tol)

    return run


# ---- N11: the fused float32 CPU kernel against the float64 formula ---------------------------------------

# N11 (proofs/norm.md): the kernel rounds once to float32 at the end, so each value is within (u32 + 2^-40)|ref| plus a
# float64-sized term 2^-46 (n + 8)^k (1 + A/sigma) S of the float64 evaluation of the same layer on the same values.
_N11_U = 2.0**-24 + 2.0**-40
_N11_TINY = 2.0**-150  # rounding into float32's subnormal range is off by up to half its spacing 2^-149
_N11_EPS = 1e-5
_N11_LAMBDA = (1e-3, 1.0)  # the layers' default [lambda_min, lambda_max]


def n11_ready(device: torch.device) -> None:
    """Raise :class:`NotApplicable` unless the fused float32 CPU kernel of ``_native`` serves ``device``."""
    from rln_verified._native import rnorm

    if device.type != "cpu":
        raise NotApplicable(f"N11 is the fused CPU kernel's claim; float32 on {device.type} runs the operator's "
                            "plain formula, which N0-N10 cover")
    if not rnorm.available():
        why = "switched off (disabled())" if rnorm.library() is not None else rnorm.reason()
        raise NotApplicable(f"the fused kernel is not in use here: {why}")


def _n11_cases(two_d: bool) -> Callable[[torch.dtype], st.SearchStrategy[Any]]:
    @st.composite
    def cases(draw: Any) -> dict[str, Any]:
        p = draw(st.integers(2, 6)) if two_d else draw(st.integers(1, 3))
        l_ = draw(st.sampled_from([2, 3, 4, 5, 7, 8, 16, 19, 24, 32]))  # 8: the row-vector planes; 8k: the strips
        n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        shape = (n, c, p, l_) if two_d else (n, p, l_)
        size = math.prod(shape)
        return {"shape": shape, "scale": 2.0 ** draw(st.integers(-140, 120)),
                "offset": draw(st.sampled_from([0.0, 1.0, 1e4, 1e20])),
                "vals": draw(st.lists(st.floats(-4, 4, width=32), min_size=size, max_size=size)),
                "affine": draw(st.sampled_from(["none", "weight", "both"])),
                "alpha": draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
                "raw": draw(st.floats(-1.5707963705062866, 1.5707963705062866, width=32)),
                "seed": draw(st.integers(0, 2**16))}

    return lambda dtype: cases()


def _n11_pin(shape: tuple[int, ...], vals: list[float], scale: float = 1.0, offset: float = 0.0,
             **kw: Any) -> dict[str, Any]:
    size = math.prod(shape)
    base = {"shape": shape, "scale": scale, "offset": offset, "vals": (vals * size)[:size], "affine": "both",
            "alpha": 1.0, "raw": 0.0, "seed": 0}
    return {**base, **kw}


def _n11_examples(two_d: bool) -> Callable[[torch.dtype], Sequence[Any]]:
    if two_d:
        pins = [
            _n11_pin((2, 3, 4, 5), [1.0]),  # constant groups
            _n11_pin((2, 2, 4, 4), [1.0, -1.0]),  # alternating signs
            _n11_pin((1, 2, 5, 5), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0]),  # spikes
            _n11_pin((1, 2, 3, 4), [1.0, -1.0, 0.5, 0.25], scale=3e38),  # float32 max
            _n11_pin((1, 2, 2, 3), [1.0, -0.5, 0.25], scale=2.0**-140),  # subnormals
            # long rows take the 5-tap form of B^T B with computed pads (rnorm.c): spikes on the end rows and columns
            _n11_pin((1, 2, 4, 16), [9.0] + [0.0] * 14 + [-5.0] + [0.0] * 32 + [3.0] + [0.0] * 14 + [2.0]),
            _n11_pin((1, 1, 5, 17), [0.0, 4.0] + [0.0] * 14 + [2.0, -1.0]),
            # rows of 8 are one vector (shuffled window sums), rows of 8k go in 8-column strips (rnorm.c): spikes in
            # the reflected lanes of the end rows and columns, and a huge offset
            _n11_pin((1, 2, 5, 8), [6.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 3.0] + [0.0] * 24 + [1.0] + [0.0] * 6 + [4.0]),
            _n11_pin((2, 1, 2, 8), [1.0, -1.0, 0.5, 0.0, 2.0, 0.0, 0.0, -3.0], offset=1e4),
            _n11_pin((1, 2, 4, 24), [5.0] + [0.0] * 22 + [-7.0] + [0.0] * 48 + [2.0] + [0.0] * 22 + [1.0]),
            _n11_pin((1, 1, 3, 16), [0.25, -0.5, 1.0], offset=1e4),
            _n11_pin((2, 2, 3, 3), [1.0, 2.0, -3.0], raw=-1.5707963705062866, alpha=3.0),  # lambda at its ends
            _n11_pin((2, 2, 3, 3), [1.0, 2.0, -3.0], raw=1.5707963705062866, affine="none"),
        ]
    else:
        pins = [
            _n11_pin((2, 3, 6), [0.5, -0.5, 0.0], offset=1e6),  # huge offset
            _n11_pin((2, 1, 2), [1.0, 2.0]),  # the smallest window
            _n11_pin((3, 2, 7), [1.0, -1.0, 2.0], affine="none"),
            _n11_pin((2, 2, 16), [7.0, -3.0] + [0.0] * 12 + [1.0, 5.0]),
            _n11_pin((1, 2, 4), [1.0, -1.0, 0.5, 0.25], scale=3e38),
            _n11_pin((2, 3, 5), [1.0], offset=1e20),  # constant groups far from 0
            _n11_pin((2, 1, 32), [6.0, 0.0, -1.0] + [0.0] * 28 + [4.0]),  # rows of 8k: the end lanes
            _n11_pin((1, 2, 24), [0.5, -0.5, 0.0], offset=1e6),
            _n11_pin((2, 1, 8), [3.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0, -5.0]),
        ]
    return lambda dtype: pins


def _n11_run_layer(cls: type[nn.Module], case: dict[str, Any], bayes: bool, two_d: bool, x: torch.Tensor,
                   params: dict[str, torch.Tensor], gy: torch.Tensor, gu: torch.Tensor) -> list[torch.Tensor]:
    """(y, u, dL/dx, dL/dweight, dL/dbias, dL/dlambda_raw) of a fresh layer of ``cls`` in x's dtype, with the given
    parameter values, for L = sum(y gy) + sum(u gu) (u = 0 and no u term for the plain layers)."""
    dt = x.dtype
    affine, shape = case["affine"], case["shape"]
    kw: dict[str, Any] = {"eps": _N11_EPS, "bias": affine == "both", "dtype": dt}
    kw["affine" if two_d else "elementwise_affine"] = affine != "none"
    if bayes:
        kw["alpha"] = case["alpha"]
    mod = cls(shape[1] if two_d else tuple(shape[1:]), **kw)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            p.copy_(params[name].to(dt).reshape(p.shape))
    xs = x.detach().clone().requires_grad_(True)
    if bayes:
        y, u = mod(xs, return_uncertainty=True)
        loss = (y * gy.to(dt)).sum() + (u * gu.to(dt)).sum()
    else:
        y = mod(xs)
        u = torch.zeros(gu.shape, dtype=dt)
        loss = (y * gy.to(dt)).sum()
    names = [n for n, _ in mod.named_parameters()]
    leaves = [xs, *mod.parameters()]
    grads = dict(zip(["x", *names], torch.autograd.grad(loss, leaves), strict=True))
    zero = torch.zeros((), dtype=dt)
    return [y.detach(), u.detach(), grads["x"], grads.get("weight", zero), grads.get("bias", zero),
            grads["lambda_raw"]]


def _n11(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    cls = subject.info["cls"]
    two_d, bayes = subject.info["two_d"], subject.info["bayes"]

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        """Largest ratio |kernel - float64 formula| / N11's bound over y, u and every gradient (NaN: inf)."""
        from rln_verified._native import rnorm

        n11_ready(device)
        shape = tuple(case["shape"])
        x32 = (torch.tensor(case["vals"], dtype=torch.float64).reshape(shape) * case["scale"] + case["offset"])
        x32 = x32.clamp(-3e38, 3e38).float()
        g = torch.Generator().manual_seed(case["seed"])
        kshape = (shape[1],) if two_d else tuple(shape[1:])
        params = {"weight": 1 + 0.5 * torch.randn(kshape, generator=g), "bias": 0.3 * torch.randn(kshape, generator=g),
                  "lambda_raw": torch.tensor([case["raw"]], dtype=torch.float32)}
        params = {k: v.float() for k, v in params.items()}
        gy = torch.randn(shape, generator=g)
        ushape = (*shape[:2], 1, 1) if two_d else shape[:1] + (1,) * (len(shape) - 1)
        gu = torch.randn(ushape, generator=g)
        mode = 0 if case["affine"] == "none" else (1 if two_d else 2)
        p_, l_ = shape[-2], shape[-1]
        w_, b_ = (params["weight"] if mode else None), (params["bias"] if case["affine"] == "both" else None)
        if not rnorm.usable(x32, w_, b_, params["lambda_raw"], mode, p_, l_):
            raise NotApplicable(f"the fused kernel does not serve these tensors here: {rnorm.reason()}")
        got = _n11_run_layer(cls, case, bayes, two_d, x32, params, gy, gu)
        ref = _n11_run_layer(cls, case, bayes, two_d, x32.double(), params, gy.double(), gu.double())
        if has_nan(got, ref):
            return math.inf  # finite inputs: every value and gradient is finite (N2, N3)
        alpha = case["alpha"] if bayes else 0.0
        lo, hi = _N11_LAMBDA
        lam = lo + (hi - lo) * 0.5 * (1.0 + math.sin(case["raw"]))
        dlam = (hi - lo) * 0.5 * abs(math.cos(case["raw"]))  # |d lambda / d raw|: the raw gradient's scale

        # group statistics of the float64 input, per element
        xd = x32.double()
        dims = (-2, -1) if two_d else tuple(range(1, len(shape)))
        m = math.prod(shape[-2:]) if two_d else math.prod(shape[1:])
        mean = xd.mean(dim=dims, keepdim=True)
        sigma = torch.sqrt(((xd - mean) ** 2).mean(dim=dims, keepdim=True) + _N11_EPS)
        amp = 1 + xd.abs().amax(dim=dims, keepdim=True) / sigma
        wd = params["weight"].double()
        wmax = float(wd.abs().max()) if mode else 1.0
        wel = wd.reshape((1, -1, 1, 1) if two_d else (1, *kshape)) if mode else torch.ones((), dtype=torch.float64)
        margins: list[float] = []

        def bound(err: torch.Tensor, tol: torch.Tensor) -> None:
            margins.append(fold(err / (tol + _N11_TINY)))

        y, u, gx, gw, gb, gl = (t.double() for t in got)
        yr, ur, gxr, gwr, gbr, glr = ref
        bound((y - yr).abs(), _N11_U * yr.abs() + wel.abs() * 2.0**-46 * (m + 8) * amp)
        bound((u - ur).abs(), _N11_U * ur.abs() + 2.0**-46 * (m + 8) * amp.reshape(ur.shape))
        s_x = (wmax * gy.double().abs().amax(dim=dims, keepdim=True) + alpha * lam * gu.double().abs()) / sigma
        bound((gx - gxr).abs(), _N11_U * gxr.abs() + 2.0**-46 * (m + 8) ** 2 * amp * s_x)
        n_all = x32.numel()
        amp_all = float(amp.max())
        xhat = ((xd - mean) / sigma).abs()
        gyd = gy.double().abs()
        red = (0, 2, 3) if two_d else (0,)
        if mode:
            s_w = (gyd * xhat).sum(dim=red).reshape(kshape)
            bound((gw - gwr).abs(), _N11_U * gwr.abs() + 2.0**-46 * (n_all + 8) ** 2 * amp_all * s_w)
        if case["affine"] == "both":
            s_b = gyd.sum(dim=red).reshape(kshape)
            bound((gb - gbr).abs(), _N11_U * gbr.abs() + 2.0**-46 * (n_all + 8) ** 2 * s_b)
        s_l = float((gyd * wel.abs() * xhat).sum() + 2 * gu.double().abs().sum())
        bound((gl - glr).abs(), _N11_U * glr.abs() + 2.0**-46 * (n_all + 8) ** 2 * amp_all * s_l * dlam)
        return fold(margins)

    return run


# N11, "The per-group scalars in 8 lanes" (proofs/norm.md): the 8-lane psi within 10u c(t) + u <= 431u above the
# switch (c(0.1) < 43, PSI-3) and PSI-3's 19u below it; the 8-lane expm1 within 4 eps; the scalar psi (builds
# without the vector paths, and the lanes handed over) within PSI-3's float64 bound, 44 eps.
N11_PSI_LANE_TOL = 431 * 2.0**-53
N11_EXPM1_LANE_TOL = 4 * 2.0**-52
N11_PSI_SCALAR_TOL = 44 * 2.0**-52


def _n11_lanes_cases(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    t = st.one_of(log_uniform(1e-300, 1e300), log_uniform(1e-3, 10.0), st.just(0.0))
    z = st.one_of(log_uniform(1e-300, 800.0), st.floats(0.0, 2.0)).map(lambda v: -v)
    return st.lists(st.tuples(t, z), min_size=1, max_size=11)


def _n11_lanes_examples(dtype: torch.dtype) -> Sequence[Any]:
    near = [math.nextafter(0.1, 0.0), 0.1, math.nextafter(0.1, 1.0)]
    return [[(t, -math.log(2) / 2) for t in near], [(0.10195186800370509, -0.3566382198949638)],
            [(10.0 ** (-3 + k / 10), -k * math.log(2) / 2) for k in range(40)]]


def _n11_lanes(case: Any, device: torch.device, dtype: torch.dtype) -> float:
    from rln_verified._native import rnorm
    from rln_verified.verify.special import psi_ref

    n11_ready(device)
    ts = torch.tensor([float(c[0]) for c in case], dtype=torch.float64)
    zs = torch.tensor([float(c[1]) for c in case], dtype=torch.float64)
    scalar = rnorm.scalar_psi(ts)
    if scalar is None:
        raise NotApplicable(f"the fused kernel is not loaded here: {rnorm.reason()}")
    lanes = rnorm.vector_psi_expm1(ts, zs)  # None without AVX-512: the scalar psi is then every group's, checked alone
    n = len(case)
    lane_psi = lanes[0].tolist() if lanes is not None else [None] * n
    lane_em = lanes[1].tolist() if lanes is not None else [None] * n
    margins = []
    tiny = 2.0**-1022
    for t, z, p_lane, e_lane, p_scalar in zip(ts.tolist(), zs.tolist(), lane_psi, lane_em, scalar.tolist(),
                                              strict=True):
        ref = psi_ref(t)
        for got, tol in ((p_lane, N11_PSI_LANE_TOL), (p_scalar, N11_PSI_SCALAR_TOL)):
            if got is None:
                continue
            if ref < tiny:
                margins.append(0.0 if 0.0 <= got <= tiny else math.inf)
            else:
                margins.append(ratio(abs(mpmath.mpf(got) - ref) / ref, tol))
        if e_lane is not None:
            with mpmath.workdps(60):
                e_ref = mpmath.expm1(mpmath.mpf(z))
            margins.append(0.0 if e_ref == 0 and e_lane == 0
                           else ratio(abs(mpmath.mpf(e_lane) - e_ref) / abs(e_ref), N11_EXPM1_LANE_TOL))
    return fold(margins)


def _n11_checks() -> tuple[Check, ...]:
    out = []
    for s in our_subjects():
        s_info = {**s.info, "cls": {c.__name__: c for c in (RLayerNorm, BayesianRLayerNorm, RLayerNorm2d,
                                                              BayesianRLayerNorm2d)}[s.name]}
        subject = LayerSubject(s.name, s.factory, s.shape, s.groups, s.eps, s_info)
        two_d = bool(s.info["two_d"])
        out.append(Check(claim="N11", subject=s.name, strategy=_n11_cases(two_d), run=_n11(subject),
                         metric="max over y, u, every gradient of |kernel - float64 formula| / N11 bound",
                         dtypes=(torch.float32,), examples=_n11_examples(two_d)))
    out.append(Check(claim="N11", subject="rnorm psi and expm1", strategy=_n11_lanes_cases, run=_n11_lanes,
                     metric="rel err / derived tol: 8-lane psi 431u, 8-lane expm1 4 eps, scalar psi 44 eps (mpmath)",
                     dtypes=(torch.float64,), examples=_n11_lanes_examples))
    return tuple(out)


# ---- registration ---------------------------------------------------------------------------------------

_FACTORIES: dict[str, tuple[Callable[[LayerSubject], Callable[[Any, torch.device, torch.dtype], float]], str]] = {
    "N0": (_n0, "r / Lambda (the sharp bound; the closed form c_max/|W| is larger)"),
    "N1": (_n1, "|y - beta| / (|gamma| sqrt(M-1))"),
    "N2": (_n2, "|y - y_ref| / derived tolerance"),
    "N3": (_n3, "tightness: ||dy/dx||_2 sqrt(v+eps) / (K max|gamma|), Jacobian rounding divided out; the worst "
                "margin is the best ratio found / K"),
    "N4": (lambda s: _invariance(s, "N4"), "max(|y(x+c) - y(x)|, |u(x+c) - u(x)|) / derived tolerance, and "
                                           "|u - U(lambda r)| / (e_rel U) (relative accuracy of u)"),
    "N5": (lambda s: _invariance(s, "N5"), "|y(a x) - y(x)| / derived tolerance"),
    "N6": (_n6, "|y(alpha=0) - layer_norm| / derived tolerance"),
    "N7": (_n7, "sigma_eff >= sigma, u in [0,1) nondecreasing in r"),
    "N8": (_n8, "lambda's place: <= 0.5 in [lo, hi], <= 1 within its rounding allowance; inf if d/draw is 0 or of "
                "the wrong sign"),
    "N9": (_n9, "0 if other samples are bit-identical, inf otherwise"),
    "N10": (_n10, "|grad sum(y)| / derived tolerance"),
}

#: The claims that apply to any normalization layer (``rln-verify audit``): output bound, accuracy at every
#: magnitude, gradient bound, shift and scale invariance, batch isolation and the sum invariant, each in
#: every dtype (dtype robustness).
GENERIC_CLAIMS: tuple[str, ...] = ("N1", "N2", "N3", "N4", "N5", "N9", "N10")


_CASES: dict[str, tuple[Callable[[LayerSubject], Callable[[torch.dtype], st.SearchStrategy[Any]]],
                        Callable[[LayerSubject], Callable[[torch.dtype], Sequence[Any]]]]] = {
    "N8": (_n8_cases, _n8_examples),
}


def make_checks(subject: LayerSubject, claims: Sequence[str] | None = None) -> tuple[Check, ...]:
    """The checks of the given claims (default: all) for one subject."""
    out = []
    for cid in claims or tuple(_FACTORIES):
        factory, metric = _FACTORIES[cid]
        cases, examples = _CASES.get(cid, (case_strategy, _examples))
        out.append(Check(claim=cid, subject=subject.name, strategy=cases(subject), run=factory(subject),
                         metric=metric, dtypes=ALL_DTYPES, examples=examples(subject)))
    return tuple(out)


for _s in our_subjects():
    _claims = [c for c in _FACTORIES if c not in ("N6", "N7") or _s.info["bayes"]]
    register(*make_checks(_s, _claims))
register(*_n11_checks())
