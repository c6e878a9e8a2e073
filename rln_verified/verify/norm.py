"""Checks of N0..N10 (proofs/norm.md), generic over :class:`LayerSubject` so that ``rln-verify audit``
runs the same checks on anyone's normalization layer."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from rln_verified import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified.verify._core import ALL_DTYPES, Check, eps, register
from rln_verified.verify._subjects import LayerSubject, NotApplicable

# ---- the formula in float64 (the reference of N2, and the definitions of N0) ---------------------


def reference_planes(x: torch.Tensor, eps_: float, alpha: float, lam: float, bayes: bool,
                     two_d: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (no affine), u and r of the N0 formulas on float64 planes (..., P, L), by the textbook route
    (reflect pad, box means, E[z^2] - E[z]^2 on centred values). Groups are first scaled by a power of two
    (exact) so that no square overflows; eps is scaled with them."""
    x = x.double()
    m = x.abs().amax(dim=(-2, -1), keepdim=True)
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    s = torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=0))
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
    """The kernel's per-group statistics (N0 checks the r it computes), wherever the kernel module lives."""
    for name in ("rln_verified._rnorm",):
        try:
            fn = importlib.import_module(name).group_stats
        except (ModuleNotFoundError, AttributeError):
            continue
        return cast(Callable[[torch.Tensor, float, bool], dict[str, torch.Tensor]], fn)
    raise ImportError("rln_verified has no kernel module with group_stats (_rnorm or _rln)")


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

    info = rln_info(norm_dims, two_d, bayes, alpha=1.0, lambda_max=1.0)
    info["ours"] = True
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
            ("random", emax, 0.0, [(-1) ** i * (i + 1) / n for i in range(n)]),  # near the dtype's max
            ("random", emin, 0.0, [(-1) ** i * (i + 1) / n for i in range(n)]),  # subnormal
            ("spike", 66, 0.0, zeros) if dtype != torch.float16 else ("spike", 15, 0.0, zeros),  # 1e20 / 65504
        ]
        # torch.nn.functional.layer_norm's float32 failures, tiled over the input.
        for pat in ([1e20, -1e20, 0.0, 3e19], [3e38, -3e38, 0.0, 1.0]):
            v = [pat[i % 4] / 3.5e38 for i in range(n)]
            out.append(("random", 128 if dtype in (torch.float32, torch.float64) else emax, 0.0, v))
        # The exact values of issue 3, used as given (e = 0): torch's failing float32 rows, a 1e20 spike, 3e38,
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
    mod = subject.factory(device, dtype)
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


def _cd(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def group_sigma(xg: torch.Tensor, eps_: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma = sqrt(v + eps), max|x| / sigma) per group of a float64 (G, M) view, without overflow:
    each group is scaled by a power of two first (exact)."""
    m = xg.abs().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    s = torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=-1000))
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
        planes = x.to(_cd(dtype)).reshape(-1, p, l_)
        r = group_stats(planes, float(subject.eps or 1e-5), info["two_d"])["r"].double().cpu()
        if not torch.isfinite(r).all() or (r < 0).any():
            return math.inf
        # r is computed with absolute error <= (2 log2 M + 8) u_c (proofs/norm.md, N0), so the exact bound
        # Lambda is met up to that.
        m = p * l_
        slack = (2 * math.log2(m) + 8) * eps(_cd(dtype)) / 2
        return float(r.max()) / (float(info["sharp_ratio_bound"]) + slack)

    return run


# ---- N1: output bound --------------------------------------------------------------------------------


def _n1(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        mod = _module(subject, device, dtype)
        x = build(subject, case, device, dtype)
        y = _output(subject, mod, x).double().cpu()
        if not torch.isfinite(y).all():
            return math.inf
        gw, gb = _affine(mod, x, subject)
        yg = subject.groups(y)
        m = yg.shape[-1]
        # A centred group has |x_c,i| <= sqrt(M-1) sigma; a layer that does not centre (RMSNorm) only has
        # |x_i| <= sqrt(M) rms. Rounding slack: y = x_c a w + b takes <= 8 roundings in the compute dtype
        # after x_c, each relative u_c on a value <= sqrt(M-1)|gamma|; storage rounding adds u_d |y|.
        uc, ud = eps(_cd(dtype)) / 2, eps(dtype) / 2
        c = math.sqrt(m - 1) if subject.info.get("centred", True) else math.sqrt(m)
        bound = gw.abs() * c * (1 + 16 * uc + ud) + gb.abs() * (2 * ud)
        return float(((yg - gb).abs() / bound).max())

    return run


# ---- N2: finite and accurate at every magnitude ----------------------------------------------------


def n2_tolerance(x64: torch.Tensor, ref_y: torch.Tensor, m: int, alpha: float, dtype: torch.dtype,
                 eps_: float) -> torch.Tensor:
    """Per-element absolute tolerance of N2 (before gamma), from proofs/norm.md:
    u_c [(log2 M + 4) A/sigma + (3(1+alpha) log2 M + 24)(1 + |y|)] + u_d |y|, with A = max|x| of the group:
    rounding x and mu moves x_c by u_c A per operation, which is A/sigma in the output's units."""
    uc, ud = eps(_cd(dtype)) / 2, eps(dtype) / 2
    lg = math.log2(max(m, 2))
    _, ratio = group_sigma(x64, eps_)
    return uc * ((lg + 4) * ratio + (3 * (1 + alpha) * lg + 24) * (1 + ref_y.abs())) + ud * ref_y.abs()


def plain_reference(xg: torch.Tensor, eps_: float, centred: bool) -> torch.Tensor:
    """LayerNorm (``centred``) or RMSNorm of the float64 groups (G, M), without affine, without overflow:
    each group is scaled by a power of two first (exact), and eps with it (clamped at the smallest normal,
    as in :func:`reference_planes`)."""
    m = xg.abs().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, e = torch.frexp(m)
    s = torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=0))  # scale large groups down only; eps dominates tiny
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
        if not torch.isfinite(y).all():
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
        return float(err.max())

    return run


# ---- N3: bounded gradient ------------------------------------------------------------------------------

_NEEDS_K = ("{claim} is stated with the layer's eps and its gradient constant K (known for torch's LayerNorm, "
            "GroupNorm and RMSNorm and for the R-LayerNorm layers; give it with --gradient-constant)")
_NOT_CENTRED = "{claim} follows from centring, and this layer does not centre its groups (e.g. RMSNorm)"


def _n3(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
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
        if not torch.isfinite(jac).all():
            return math.inf
        idx = subject.groups(torch.arange(n).reshape(subject.shape))
        xg = subject.groups(x.double().cpu())
        gw, _ = _affine(mod, x, subject)
        worst = 0.0
        for g in range(idx.shape[0]):
            block = jac[idx[g]][:, idx[g]]
            sigma = float(group_sigma(xg[g : g + 1], subject.eps)[0])
            norm = float(torch.linalg.matrix_norm(block, ord=2))
            # The Jacobian is computed in the compute dtype, relative error <= 64 M u_c, and each entry is stored
            # in the dtype, which moves its 2-norm by <= sqrt(M) u_d relative (proofs/norm.md).
            m = idx.shape[1]
            slack = (1 + 64 * m * eps(_cd(dtype)) / 2) * (1 + math.sqrt(m) * eps(dtype) / 2)
            worst = max(worst, norm * sigma / (info["K"] * float(gw[g].abs().max()) * slack))
        return worst

    return run


# ---- N4 / N5: shift and scale invariance --------------------------------------------------------------


def _invariance(subject: LayerSubject, kind: str) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
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
            # |c| up to 2^24 |x| (fp16: 2^13, so that x + c stays finite); the tolerance grows with ulp(|c|).
            fmax_e = int(math.log2(float(torch.finfo(dtype).max)))
            c = float(offset) * 2.0 ** min(e, 24, fmax_e - 3)
            x2 = x + c
        else:
            x2 = x * a
        y1 = _output(subject, mod, x).double().cpu()
        y2 = _output(subject, mod, x2).double().cpu()
        if not (torch.isfinite(y1).all() and torch.isfinite(y2).all()):
            return math.inf
        gw, gb = _affine(mod, x, subject)
        xg = subject.groups(x64)
        m = xg.shape[-1]
        v = xg.var(-1, unbiased=False, keepdim=True)
        sigma = torch.sqrt(v + subject.eps)
        uc = eps(_cd(dtype)) / 2
        x2g = subject.groups(x2.double().cpu())
        # Rounding x + c (or a x) moves each element by <= u_d |result|; the output moves by <= K ||dx|| / sigma
        # (N3) times |gamma|; both evaluations carry their own N2 error.
        ud = eps(dtype) / 2
        pert = ud * x2g.abs().amax(-1, keepdim=True) * math.sqrt(m)
        if kind == "N5":
            pert = pert / a  # the rounding of a x, in the units of x
            # y(a x; eps) = y(x; eps / a^2), and |dz/deps| <= sqrt(M-1)(1/2 + b Lambda)/(v + eps') between the two
            # eps (N5); b Lambda = sqrt(K^2 - 1) with K of N3 (0 for a plain LayerNorm, K = 1).
            b_lam = math.sqrt(max(info["K"] ** 2 - 1.0, 0.0))
            eps_lo = subject.eps * min(1.0, 1.0 / (a * a))
            eps_shift = math.sqrt(m - 1) * (0.5 + b_lam) * subject.eps * abs(1 - 1 / (a * a)) / (v + eps_lo)
        else:
            eps_shift = torch.zeros_like(v)
        ref = subject.groups(y1)
        tol = (info["K"] * pert / sigma + 2 * n2_tolerance(xg, (ref - gb) / gw, m, info.get("alpha", 1.0), dtype,
                                                           subject.eps)
               + eps_shift + 8 * uc)
        err = (subject.groups(y2) - ref).abs() / (gw.abs() * tol)
        return float(err.max())

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
        return float(((subject.groups(y) - subject.groups(ref)).abs() / den).max())

    return run


# ---- N7: noise monotonicity -------------------------------------------------------------------------


def _n7(subject: LayerSubject) -> Callable[[Any, torch.device, torch.dtype], float]:
    info = subject.info

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        if not (info.get("ours") and info.get("bayes")):
            raise NotApplicable("N7 is about the Bayesian layers' u")
        mod = _module(subject, device, dtype)
        x = build(subject, ("random", 0, 0.0, case[3]), device, dtype)
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
        uc = eps(_cd(dtype)) / 2
        # y is rounded next to beta, so y - beta carries up to u_d |y| <= u_d (|beta| + |gamma| sqrt(M)).
        slack = eps(dtype) * (gb.abs() + gw.abs() * math.sqrt(xg.shape[-1]) * 1e-300)
        margin = float((lhs / (rhs * (1 + 16 * uc + eps(dtype)) + slack + 1e-300)).max())
        # u nondecreasing in r: sort groups by r, u must follow (up to its rounding 8 u_c).
        order = torch.argsort(r.flatten())
        us = u[order]
        drops = (us[:-1] - us[1:]).clamp_min(0.0)
        return max(margin, float(drops.max() / (8 * uc + eps(dtype))) if drops.numel() else 0.0)

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
        same = torch.equal(y1[1:].detach(), y2[1:].detach()) or bool(
            (y1[1:].isnan() == y2[1:].isnan()).all() and (y1[1:][~y1[1:].isnan()] == y2[1:][~y2[1:].isnan()]).all()
        )
        same_grad = torch.equal(g1[1:], g2[1:]) or bool(
            (g1[1:].isnan() == g2[1:].isnan()).all() and (g1[1:][~g1[1:].isnan()] == g2[1:][~g2[1:].isnan()]).all()
        )
        # Sample 0 holds the poison: no other sample's output or gradient may change at all (bit-exact).
        return 0.0 if (same and same_grad) else math.inf

    return run


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
        uc = eps(_cd(dtype)) / 2
        k = subject.info.get("K", 1.0)
        tol = 1.5 * k / sigma * uc * ((4 * m + 16) + 2 * math.sqrt(m) * (math.log2(m) + 3) * a_over_sigma)
        return float((g.abs() / tol).max())

    return run


# ---- registration ---------------------------------------------------------------------------------------

_FACTORIES: dict[str, tuple[Callable[[LayerSubject], Callable[[Any, torch.device, torch.dtype], float]], str]] = {
    "N0": (_n0, "r / Lambda (the sharp bound; the closed form c_max/|W| is larger)"),
    "N1": (_n1, "|y - beta| / (|gamma| sqrt(M-1))"),
    "N2": (_n2, "|y - y_ref| / derived tolerance"),
    "N3": (_n3, "||dy/dx||_2 sqrt(v+eps) / (K max|gamma|)"),
    "N4": (lambda s: _invariance(s, "N4"), "|y(x+c) - y(x)| / derived tolerance"),
    "N5": (lambda s: _invariance(s, "N5"), "|y(a x) - y(x)| / derived tolerance"),
    "N6": (_n6, "|y(alpha=0) - layer_norm| / derived tolerance"),
    "N7": (_n7, "sigma_eff >= sigma, u in [0,1) nondecreasing in r"),
    "N9": (_n9, "0 if other samples are bit-identical, inf otherwise"),
    "N10": (_n10, "|grad sum(y)| / derived tolerance"),
}

#: The claims that apply to any normalization layer (``rln-verify audit``): output bound, accuracy at every
#: magnitude, gradient bound, shift and scale invariance, batch isolation and the sum invariant, each in
#: every dtype (dtype robustness).
GENERIC_CLAIMS: tuple[str, ...] = ("N1", "N2", "N3", "N4", "N5", "N9", "N10")


def make_checks(subject: LayerSubject, claims: Sequence[str] | None = None) -> tuple[Check, ...]:
    """The checks of the given claims (default: all) for one subject."""
    out = []
    for cid in claims or tuple(_FACTORIES):
        factory, metric = _FACTORIES[cid]
        out.append(Check(claim=cid, subject=subject.name, strategy=case_strategy(subject), run=factory(subject),
                         metric=metric, dtypes=ALL_DTYPES, examples=_examples(subject)))
    return tuple(out)


for _s in our_subjects():
    _claims = [c for c in _FACTORIES if c not in ("N6", "N7") or _s.info["bayes"]]
    register(*make_checks(_s, _claims))
