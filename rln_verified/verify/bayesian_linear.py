"""Checks of C1-C6 (proofs/bayesian_linear.md): the Bayesian linear layers.

The Monte Carlo halves of C2 and C3 are pytest tests with fixed seeds (tests/test_bayesian_linear.py);
the checks here are the exact, per-case halves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import mpmath
import torch
from hypothesis import strategies as st

from rln_verified._bayesian_conv import CONV_TYPES, BayesianConv2d, CLTConv2d
from rln_verified._bayesian_linear import LAYER_TYPES, BayesianLayer, BayesianLinear, CLTLinear
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified._bayesian_std import std_bounds
from rln_verified._special import SOFTPLUS_THRESHOLD
from rln_verified.verify._core import PSI_REL_ERR, Check, eps, finite_floats, log_uniform, register, unit_roundoff
from rln_verified.verify._margins import fold, guarded, has_nan, ratio
from rln_verified.verify.gaussian import kl_ref


def gamma(n: int, dtype: torch.dtype) -> float:
    """gamma_n = n u / (1 - n u), the bound of an n-term floating-point sum or product chain."""
    nu = n * unit_roundoff(dtype)
    return nu / (1.0 - nu)


_U64 = 2.0**-53


def _compute(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _sp64(r: float) -> float:
    """softplus in Python float64 (not torch): x above 37, else log1p(exp(x)); error <= 2 eps64 + u64."""
    return r if r > 37.0 else math.log1p(math.exp(r))


def _sigmoid64(r: float) -> float:
    return 1.0 / (1.0 + math.exp(-r)) if r >= 0 else math.exp(r) / (1.0 + math.exp(r))


def std_reference(layer: BayesianLayer, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma, d sigma/d rho, d sigma^2/d rho) of the closed form, in Python float64 (math.exp / log1p, independent of
    the layer and of torch): sigma = exp(c) or softplus(c), c = rho clamped to the layer's bounds as rounded to its
    dtype (C6); the derivatives are 0 where rho is clamped."""
    dt = rho.dtype
    lo, hi = std_bounds(dt)
    if layer.use_softplus:
        with mpmath.workdps(30):  # inv_softplus(lo), correctly rounded, then rounded to the dtype as clamp does
            lo_rho = float(mpmath.log(mpmath.expm1(mpmath.mpf(lo))))
        bounds = (lo_rho, hi)
    else:
        bounds = (math.log(lo), math.log(hi))
    b_lo, b_hi = (float(torch.tensor(b, dtype=torch.float64).to(dt).double()) for b in bounds)
    vals, d1, d2 = [], [], []
    for r in rho.detach().double().cpu().reshape(-1).tolist():
        c = min(max(r, b_lo), b_hi)
        inside = b_lo <= r <= b_hi
        if layer.use_softplus:
            s, ds = _sp64(c), _sigmoid64(c)
        else:
            s = math.exp(c)
            ds = s
        vals.append(s)
        d1.append(ds if inside else 0.0)
        d2.append(2.0 * s * ds if inside else 0.0)
    shape = rho.shape
    return tuple(torch.tensor(v, dtype=torch.float64).reshape(shape) for v in (vals, d1, d2))  # type: ignore[return-value]


def std_rel_bound(layer: BayesianLayer, dtype: torch.dtype) -> float:
    """Relative distance of the layer's sigma from :func:`std_reference`: exp within 1 ulp of the compute dtype (EXP-1:
    the float32 kernel 0.99 ulp; torch's float64 exp < 1 ulp), softplus within 3 eps (SP-1); the reference's own
    rounding adds eps64 (exp) or 3 eps64 (log1p of exp); a float16/bfloat16 result is rounded once more (u_d)."""
    cd = _compute(dtype)
    ec = eps(cd)
    extra = eps(dtype) / 2 if cd != dtype else 0.0
    if layer.use_softplus:
        return 3 * ec + 3 * eps(torch.float64) + extra
    return ec + eps(torch.float64) + extra


def _make(kind: str, case: dict[str, Any], device: torch.device, dtype: torch.dtype, **kw: Any) -> BayesianLinear:
    """A layer of ``kind`` with parameters drawn from ``case['seed']`` (rho around ``case['rho']``)."""
    cls = LAYER_TYPES[kind]
    extra: dict[str, Any] = {}
    if issubclass(cls, CLTLinear):
        extra = {"act": case.get("act", "relu"), "is_input": case.get("is_input", False),
                 "is_output": case.get("is_output", False)}
    layer = cls(case["n_in"], case["n_out"], bias=case["bias"], use_softplus=case.get("softplus", False),
                device=device, dtype=dtype, **extra, **kw)
    g = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_mu"):
                v = torch.randn(p.shape, generator=g, dtype=torch.float64) * case.get("mu_scale", 1.0)
            else:
                v = case.get("rho", -2.0) + case.get("rho_spread", 1.0) * torch.randn(p.shape, generator=g,
                                                                                      dtype=torch.float64)
            p.copy_(v.to(dtype))
    return layer


def _inputs(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(case["batch"], case["n_in"], generator=g, dtype=torch.float64) * case.get("x_scale", 1.0)
    if case.get("zero_rows", False):
        x[0] = 0.0
    out: torch.Tensor = x.to(device=device, dtype=dtype)
    return out


def _layer_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "n_in": st.integers(1, 6), "n_out": st.integers(1, 5), "batch": st.integers(1, 4),
        "bias": st.booleans(), "softplus": st.booleans(), "seed": st.integers(0, 2**31 - 1),
        "mu_scale": log_uniform(1e-3, 1e2), "rho": st.floats(-8.0, 2.0), "rho_spread": st.floats(0.0, 2.0),
        "x_scale": log_uniform(1e-3, 1e2), "zero_rows": st.booleans(),
    })


# ---- C1: KL -------------------------------------------------------------------------------------------


def _kl_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda base, prior, pm, ps, equal: {**base, "prior": prior, "pm": pm, "ps": ps, "equal": equal},
        _layer_cases(dtype),
        st.sampled_from(["default", "int", "float", "0d", "one", "weight"]),
        st.floats(-3.0, 3.0), log_uniform(1e-2, 1e2), st.booleans(),
    )


def _prior_args(case: dict[str, Any], dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The case's prior; a weight-shaped one has ``shape`` (default ``(n_out, n_in)``; a conv kernel's shape)."""
    kind, pm, ps = case["prior"], case["pm"], case["ps"]
    shape = (case["n_out"], case["n_in"]) if shape is None else shape
    if kind == "default":
        return {}
    if kind == "int":
        return {"prior_mean": round(pm), "prior_std": max(1, round(ps))}
    if kind == "float":
        return {"prior_mean": pm, "prior_std": ps}
    if kind == "0d":
        return {"prior_mean": torch.tensor(pm, dtype=dtype), "prior_std": torch.tensor(ps, dtype=dtype)}
    if kind == "one":
        return {"prior_mean": torch.tensor([pm], dtype=dtype), "prior_std": torch.tensor([ps], dtype=dtype)}
    g = torch.Generator().manual_seed(case["seed"] + 2)
    return {"prior_mean": (pm + torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype),
            "prior_std": (ps * torch.rand(shape, generator=g, dtype=torch.float64).add(0.5)).to(dtype)}


def _exact_rho(layer: BayesianLayer) -> float:
    """A rho whose sigma every element computes exactly, whatever its position: exp(0) = 1, and softplus(x) = x above
    the threshold T of SP-1 (T + 3 is a float of every dtype, inside the std bounds)."""
    if layer.use_softplus:
        return SOFTPLUS_THRESHOLD[_compute(layer.weight_mu.dtype)] + 3.0
    return 0.0


def _one_sigma(layer: BayesianLayer) -> bool:
    """True when std() gives one value to every weight and bias (all rho being equal)."""
    ws, bs = layer.std()
    vals = torch.cat([ws.detach().reshape(-1)] + ([bs.detach().reshape(-1)] if bs is not None else []))
    return bool((vals == vals[0]).all())


def _run_kl_equal(layer: BayesianLayer, case: dict[str, Any]) -> float:
    """Posterior := prior exactly; the KL must then be exactly 0.

    "Equal" is about the values the layer uses, mean() and std(), not about rho: torch's softplus (and exp) round an
    element by its position in the tensor (the vectorized lanes and the scalar tail differ by an ulp), so equal rho
    may give sigmas one ulp apart, and a scalar prior std taken from one of them is then not the posterior's std at
    the others (the flaky C1 case: softplus lanes one ulp apart). The premise is checked: when the drawn rho does
    not give every element one sigma, the case uses a rho whose sigma is exact in every lane (:func:`_exact_rho`)."""
    assert layer.weight_rho is not None
    for rho in (case["rho"], _exact_rho(layer)):
        with torch.no_grad():
            layer.weight_rho.fill_(rho)
            if layer.bias_rho is not None:
                layer.bias_rho.fill_(rho)
        if _one_sigma(layer):
            break
    ws, _ = layer.std()
    if case["prior"] == "weight" and ws.numel() > 1:  # a one-element prior is a scalar prior
        # Weight-shaped prior := the posterior; the biases' prior is then N(0, 1), matched by mu = 0 and
        # rho = 0 (exp(0) = 1 exactly; softplus has no float with softplus(rho) == 1 guaranteed).
        if layer.bias_mu is not None and layer.bias_rho is not None:
            if layer.use_softplus:
                return 0.0
            with torch.no_grad():
                layer.bias_mu.zero_()
                layer.bias_rho.zero_()
        layer.update_prior(layer.weight_mu.detach().clone(), ws.detach().clone())
    else:
        # A scalar prior: every mean := pm, every std is the same value s0, the prior std := s0.
        with torch.no_grad():
            layer.weight_mu.fill_(case["pm"])
            if layer.bias_mu is not None:
                layer.bias_mu.fill_(case["pm"])
        layer.update_prior(layer.weight_mu.detach().reshape(-1)[:1].clone(), ws.detach().reshape(-1)[:1].clone())
    # The premise, verified on the values KL() will use: every (mean, sigma) equals the prior's.
    wm, bm = layer.mean()
    ws2, bs2 = layer.std()
    pm_w, ps_w = layer.prior_mean.expand_as(wm), layer.prior_std.expand_as(wm)
    premise = torch.equal(wm.detach(), pm_w) and torch.equal(ws2.detach(), ps_w)
    if bm is not None and bs2 is not None:
        scalar = layer.prior_mean.numel() == 1
        pm_b = layer.prior_mean.expand_as(bm) if scalar else torch.zeros_like(bm)
        ps_b = layer.prior_std.expand_as(bm) if scalar else torch.ones_like(bm)
        premise = premise and torch.equal(bm.detach(), pm_b) and torch.equal(bs2.detach(), ps_b)
    if not premise:
        raise AssertionError("C1 equality case: the posterior built by the check does not equal the prior")
    kl, n = layer.KL()
    if n != wm.numel() + (bm.numel() if bm is not None else 0):
        return math.inf
    return 0.0 if float(kl.detach()) == 0.0 else math.inf


def _run_kl(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    layer = _make("bbb", case, device, dtype, **_prior_args(case, dtype))
    return _kl_margin(layer, case, case["n_in"] * case["n_out"] + (case["n_out"] if case["bias"] else 0), dtype)


def _kl_margin(layer: BayesianLayer, case: dict[str, Any], n_expected: int, dtype: torch.dtype) -> float:
    """C1 on a built layer (linear or conv): n_params is ``n_expected``; the KL against the mpmath sum (or exactly
    0 in the equality case)."""
    wm, bm = layer.mean()
    if case["equal"]:
        return _run_kl_equal(layer, case)
    kl, n = layer.KL()
    if n != n_expected:
        return math.inf
    got = float(kl.detach())
    if has_nan(got) or not got >= 0.0:
        return math.inf
    ws, bs = layer.std()  # only for the torch.distributions cross-check, which takes the layer's sigma as given
    assert layer.weight_rho is not None
    # The reference sigma is the float64 closed form of rho (std_reference), never the layer's own std(): a wrong std
    # would otherwise be its own reference. The layer's sigma is within delta of it (std_rel_bound), which moves a KL
    # term by <= |r^2 - 1| delta + (r^2 + 1) delta^2 (d KL/d ln sigma_q = r^2 - 1, the second derivative 2 r^2).
    delta = std_rel_bound(layer, dtype)
    ws_ref = std_reference(layer, layer.weight_rho)[0]
    bs_ref = std_reference(layer, layer.bias_rho)[0] if layer.bias_rho is not None else None
    pairs = [(wm, ws_ref, layer.prior_mean.expand_as(wm), layer.prior_std.expand_as(wm), ws)]
    if bm is not None and bs is not None and bs_ref is not None:
        scalar = layer.prior_mean.numel() == 1
        pairs.append((bm, bs_ref, layer.prior_mean.expand_as(bm) if scalar else torch.zeros_like(bm),
                      layer.prior_std.expand_as(bm) if scalar else torch.ones_like(bm), bs))
    ref = mpmath.mpf(0)
    td = 0.0
    td_err = 0.0
    sigma_err = 0.0
    n_terms = 0
    for *t, s_layer in pairs:
        flat = [a.detach().double().cpu().reshape(-1).tolist() for a in t]
        for mq, sq, mp_, sp in zip(*flat):
            ref += kl_ref(mq, sq, mp_, sp)
            r2 = (sq / sp) ** 2
            sigma_err += abs(r2 - 1.0) * delta + (r2 + 1.0) * delta * delta
            n_terms += 1
        t = [t[0], s_layer, t[2], t[3]]
        a64 = [a.detach().double().cpu() for a in t]
        q = torch.distributions.Normal(a64[0], a64[1])
        p = torch.distributions.Normal(a64[2], a64[3])
        td += float(torch.distributions.kl_divergence(q, p).sum())
        # torch.distributions evaluates 0.5 (r^2 + d^2 - 1 - log r^2) with no care for cancellation:
        # its error is <= 8 u64 per term times the size of the terms it adds.
        r2, d2 = (a64[1] / a64[3]) ** 2, ((a64[0] - a64[2]) / a64[3]) ** 2
        td_err += float((8 * 2.0**-53 * (r2 + d2 + 1 + r2.log().abs())).sum())
    # KL-1 per term, then a sum of n_terms nonnegative terms in the layer dtype (gamma_n relative), plus the sigma
    # term above (scaled by 1 + gamma_n for the sum).
    tol = (24 * unit_roundoff(dtype) + 3 * PSI_REL_ERR[dtype] + gamma(n_terms + 1, dtype)) * float(ref)
    tol += sigma_err * (1 + gamma(n_terms + 1, dtype))
    margin = ratio(float(abs(mpmath.mpf(got) - ref)), tol)
    # torch.distributions agrees within its own error plus ours (float64 only: in float32 our KL is the
    # sharper of the two and the comparison measures theirs). Both take the layer's sigma, so no sigma term.
    if dtype == torch.float64:
        tol_self = (24 * unit_roundoff(dtype) + 3 * PSI_REL_ERR[dtype] + gamma(n_terms + 1, dtype)) * abs(got)
        margin = fold(margin, ratio(abs(got - td), td_err + tol_self + 1e-300))
    return guarded(margin, ref, td)


def _kl_examples(dtype: torch.dtype) -> Sequence[dict[str, Any]]:
    base = {"n_in": 10, "n_out": 20, "batch": 1, "bias": True, "softplus": False, "seed": 0, "mu_scale": 0.1,
            "rho": -4.6, "rho_spread": 0.0, "x_scale": 1.0, "zero_rows": False}
    return [
        {**base, "prior": "int", "pm": 0.0, "ps": 1.0, "equal": False},  # ObjectRL: ValueError on an int std
        {**base, "prior": "default", "pm": 0.0, "ps": 1.0, "equal": True},
        # The flaky C1 case: float64 softplus(-0.362254) rounds one ulp apart across the lanes of a 200-element
        # tensor, so equal rho do not give one sigma; the premise must be built from the values std() returns.
        {**base, "softplus": True, "rho": -0.362254, "prior": "float", "pm": 0.25, "ps": 1.0, "equal": True},
        {**base, "n_in": 3, "n_out": 3, "prior": "weight", "pm": 0.5, "ps": 2.0, "equal": False},
    ]


# ---- C2: LR variance identity -------------------------------------------------------------------------


def _run_lr_identity(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """With the stored noise set to 1, LR's output minus the MAP output is its std, which must equal
    sqrt(x^2 sigma_W^2 + sigma_b^2), the std of BBB's output for the same posterior."""
    layer = _make("lr", case, device, dtype, manual_reset=True)
    x = _inputs(case, device, dtype)
    layer.map(True)
    m = layer(x).detach()
    layer.map(False)
    layer._random_weight = torch.ones_like(m)
    d = (layer(x) - m).detach().double().cpu()
    # The reference std: the float64 closed form of rho (never the layer's std()), within delta of the layer's sigma
    # (std_rel_bound); s is homogeneous of degree 1 in the sigmas, all terms >= 0, so it moves by <= delta s.
    assert layer.weight_rho is not None
    ws = std_reference(layer, layer.weight_rho)[0]
    bs = std_reference(layer, layer.bias_rho)[0] if layer.bias_rho is not None else None
    v = x.double().cpu().square() @ ws.square().T
    if bs is not None:
        v = v + bs.square()
    s = v.sqrt()
    n = case["n_in"] + 1
    u = unit_roundoff(dtype)
    delta = std_rel_bound(layer, dtype)
    tiny = float(torch.finfo(dtype).tiny)
    # fl(m + s) - m: <= u |m + s| + u |d|; s itself: squares (2u), an n-term sum (gamma_n), sqrt (u).
    tol = 2 * u * (m.double().abs().cpu() + 2 * s) + (gamma(n + 3, dtype) + 2 * u + delta * (1 + delta)) * s
    return guarded(fold((d - s).abs() / (tol + math.sqrt(tiny))), d, m)


# ---- C3: CLT pre-activation moments and the activation -------------------------------------------------


def _clt_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, act, has_var, vs: {**base, "act": act, "has_var": has_var, "v_scale": vs},
                     _layer_cases(dtype), st.sampled_from(["relu", "crelu"]), st.booleans(), log_uniform(1e-4, 1e2))


def _run_clt(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    pre = _make("clt", {**case, "is_input": True, "is_output": True}, device, dtype)
    post = _make("clt", {**case, "is_input": True, "is_output": False}, device, dtype)
    x = _inputs(case, device, dtype)
    g = torch.Generator().manual_seed(case["seed"] + 3)
    vh = None
    if case["has_var"]:
        vh = (torch.rand(x.shape, generator=g, dtype=torch.float64) * case["v_scale"]).to(device=device, dtype=dtype)
    m, v = pre(x, vh)
    assert v is not None
    m, v = m.detach(), v.detach()
    if has_nan(m, v):
        return math.inf
    wm, bm = pre.mean()
    assert pre.weight_rho is not None
    # The reference std is the float64 closed form of rho, never the layer's std() (std_reference); the layer's
    # sigma^2 is within (1 + delta)^2 - 1 of its square.
    ws64, _, _ = std_reference(pre, pre.weight_rho)
    bs = std_reference(pre, pre.bias_rho)[0] if pre.bias_rho is not None else None
    delta = std_rel_bound(pre, dtype)
    x64, wm64 = x.double().cpu(), wm.detach().double().cpu()
    m_ref = x64 @ wm64.T
    m_abs = x64.abs() @ wm64.abs().T
    vh64 = vh.double().cpu() if vh is not None else torch.zeros_like(x64)
    v_ref = (vh64 + x64.square()) @ ws64.square().T + vh64 @ wm64.square().T
    if bm is not None and bs is not None:
        m_ref = m_ref + bm.detach().double().cpu()
        m_abs = m_abs + bm.detach().double().cpu().abs()
        v_ref = v_ref + bs.square()
    n = case["n_in"] + 1
    # Mean: an (n)-term dot product, |fl - exact| <= gamma_n sum |terms|. Variance: 2n + 1 nonnegative
    # terms, each a product of up to 3 rounded factors (<= 4u) and one add: gamma_{2n + 6} relative, and the
    # sigma^2 of each weight term within 2 delta + delta^2 of the reference's.
    tiny = float(torch.finfo(dtype).tiny)
    margin_m = fold((m.double().cpu() - m_ref).abs() / (gamma(n, dtype) * m_abs + tiny))
    v_tol = (gamma(2 * n + 6, dtype) + delta * (2 + delta)) * (1 + gamma(2 * n + 6, dtype))
    margin_v = fold((v.double().cpu() - v_ref).abs() / (v_tol * v_ref + tiny))
    # The activation: exactly the ReLU/CReLU moments of the layer's own pre-activation moments.
    am, av = post(x, vh)
    s = torch.sqrt(v.clamp_min(torch.finfo(dtype).tiny))
    em, ev = CLTLinear.relu_moments(m, s) if case["act"] == "relu" else CLTLinear.crelu_moments(m, s)
    same = bool(torch.equal(am, em)) and av is not None and bool(torch.equal(av, ev))
    return fold(margin_m, margin_v, 0.0 if same else math.inf, _std_var_gradients(pre, dtype))


def _std_var_gradients(layer: BayesianLinear, dtype: torch.dtype) -> float:
    """The rho-gradients of std() and var() (the variance the CLT layer propagates) against the float64 closed forms:
    d sigma/d rho = sigma (exp) or sigmoid(rho) (softplus), d sigma^2/d rho = 2 sigma d sigma/d rho, 0 where rho is
    clamped (C3, C6). Bounds, relative to the reference: exp: sigma within delta (std_rel_bound), the backward's
    products u_d each: std delta + u_d, var 2 delta + 2 u_d (2 sigma^2 = 2 (sigma sigma): the square, and the exact
    doubling); softplus: sigma within 3 eps_c and torch's sigmoid z/(z + 1), z = exp(rho), within 2 eps_c: std
    2 eps_c + u_d, var 5 eps_c + 2 u_d; the reference adds 4 eps64 (math.exp, 1/(1 + .), log1p)."""
    params = [p for p in (layer.weight_rho, layer.bias_rho) if p is not None]
    ws, bs = layer.std()
    wv, bv = layer.var()
    stds = [ws] + ([bs] if bs is not None else [])
    vars_ = [wv] + ([bv] if bv is not None else [])
    cd = _compute(dtype)
    ud, ec, e64 = eps(dtype) / 2, eps(cd), eps(torch.float64)
    delta = std_rel_bound(layer, dtype)
    if layer.use_softplus:
        tol_s, tol_v = 2 * ec + ud + 4 * e64, 5 * ec + 2 * ud + 4 * e64
    else:
        tol_s, tol_v = delta + ud, 2 * delta + 2 * ud
    margins: list[float] = []
    for rho, s_t, v_t in zip(params, stds, vars_):
        _, d1, d2 = std_reference(layer, rho)
        (g_s,) = torch.autograd.grad(s_t.sum(), rho)
        (g_v,) = torch.autograd.grad(v_t.sum(), rho)
        for got, want, tol in ((g_s, d1, tol_s), (g_v, d2, tol_v)):
            g64 = got.detach().double().cpu()
            if has_nan(g64):
                return math.inf
            err = (g64 - want).abs()
            margins.append(fold(torch.where(want == 0, torch.where(err == 0, 0.0, math.inf), err / (tol * want.abs()
                                                                                                   + 1e-300))))
    return fold(margins)


# ---- C4: MAP mode -------------------------------------------------------------------------------------


def _map_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, kind, act, out: {**base, "kind": kind, "act": act, "is_output": out},
                     _layer_cases(dtype), st.sampled_from(sorted(LAYER_TYPES)), st.sampled_from(["relu", "crelu"]),
                     st.booleans())


def _run_map(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    layer = _make(case["kind"], {**case, "is_input": True}, device, dtype)
    layer.map(True)
    x = _inputs(case, device, dtype)
    wm, bm = layer.mean()
    ref = torch.nn.functional.linear(x, wm, bm)
    if isinstance(layer, CLTLinear):
        a, b = layer(x)
        a2, b2 = layer(x)
        if b is not None or b2 is not None:
            return math.inf
        if not layer.is_output:
            ref = torch.relu(ref) if layer.act == "relu" else torch.cat([torch.relu(ref), torch.relu(-ref)], -1)
    else:
        a, a2 = layer(x), layer(x)
    return 0.0 if torch.equal(a, ref) and torch.equal(a2, ref) else math.inf


def _mlp_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "kind": st.sampled_from(["bbb", "lr", "clt", "cltdet"]), "act": st.sampled_from(["relu", "crelu"]),
        "depth": st.integers(1, 4), "width": st.integers(1, 6), "n_in": st.integers(1, 5),
        "n_out": st.integers(1, 4), "batch": st.integers(1, 4), "seed": st.integers(0, 2**31 - 1),
    })


def _run_mlp_map(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    torch.manual_seed(case["seed"])
    net = BayesianMLP(case["n_in"], case["n_out"], case["depth"], case["width"], case["kind"], case["act"],
                      device=device, dtype=dtype)
    net.map(True)
    x = _inputs(case, device, dtype)
    h = x
    layers = net.bayesian_layers()
    for i, layer in enumerate(layers):
        wm, bm = layer.mean()
        h = torch.nn.functional.linear(h, wm, bm)
        if i < len(layers) - 1:
            h = torch.relu(h) if case["act"] == "relu" else torch.cat([torch.relu(h), torch.relu(-h)], -1)
    outs = [net(x), net(x)]
    for out in outs:
        if isinstance(out, tuple):
            if out[1] is not None:
                return math.inf
            out = out[0]
        if not torch.equal(out, h):
            return math.inf
    return 0.0


# ---- C5: manual reset ---------------------------------------------------------------------------------


def _reset_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, kind: {**base, "kind": kind}, _layer_cases(dtype), st.sampled_from(["bbb", "lr"]))


def _run_reset(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    layer = _make(case["kind"], {**case, "rho": 0.0}, device, dtype, manual_reset=True)
    x = _inputs(case, device, dtype) + 1.0  # a nonzero input, so the noise shows in every output
    torch.manual_seed(case["seed"])
    a, b = layer(x), layer(x)
    layer.reset_randomness()
    c = layer(x)
    layer.set_manual_reset(False)
    d, e = layer(x), layer(x)
    # Same until reset; fresh after reset, and fresh on every call without manual_reset. A continuous
    # random vector repeats with probability 0, so any equality below is a failure.
    ok = torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(d, e)
    return 0.0 if ok else math.inf


# ---- C6: finite gradients, positive finite std --------------------------------------------------------


def c6_input_bound(dtype: torch.dtype) -> float:
    """C6's bound on |x| and v_h, and on the prior std's range [1/b, b]: max^(1/8) of the dtype, rounded down to it
    (float32 6.5e4, float64 1.3e38)."""
    b = float(torch.finfo(dtype).max) ** 0.125
    r = float(torch.tensor(b, dtype=torch.float64).to(dtype).double())
    return r if r <= b else float(torch.nextafter(torch.tensor(r, dtype=dtype), torch.tensor(0.0, dtype=dtype)))


def _grad_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    """C6's whole domain: every finite rho, inputs and input variances up to max^(1/8) (both signs, every order of
    magnitude), prior std in [max^(-1/8), max^(1/8)] (None: the default N(0, 1))."""
    fmax = float(torch.finfo(dtype).max)
    b = c6_input_bound(dtype)
    rho = st.one_of(finite_floats(dtype), st.sampled_from([-fmax, fmax, 0.0, -1e4, 1e4, -100.0, 100.0]))
    mag = st.one_of(st.floats(0.0, b), log_uniform(1e-30, b))
    xs = st.one_of(st.just(0.0), st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0]),
                   st.sampled_from([1e-30, -1e-20, b, -b]))
    priors = st.one_of(st.none(), log_uniform(1.0 / b, b), st.sampled_from([1.0 / b, b]))
    return st.fixed_dictionaries({
        "kind": st.sampled_from(["bbb", "lr", "clt", "clt_out", "clt_var", "cltdet", "cltdet_var"]),
        "act": st.sampled_from(["relu", "crelu"]), "softplus": st.booleans(), "bias": st.booleans(),
        "rho": st.lists(rho, min_size=1, max_size=6), "x": st.lists(xs, min_size=1, max_size=6),
        "v": st.lists(st.one_of(st.just(0.0), log_uniform(1e-30, b), st.just(b)), min_size=1, max_size=6),
        "prior": priors, "seed": st.integers(0, 2**31 - 1),
    })


def _cycle(vals: list[float], n: int) -> list[float]:
    return [vals[i % len(vals)] for i in range(n)]


def _run_grads(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    kind = case["kind"]
    n_in, n_out = 3, 2
    base = {"n_in": n_in, "n_out": n_out, "bias": case["bias"], "softplus": case["softplus"], "seed": case["seed"],
            "act": case["act"], "is_input": kind in ("clt", "clt_out", "cltdet"), "is_output": kind == "clt_out"}
    prior = case.get("prior")
    layer = _make(kind.split("_")[0], base, device, dtype, **({} if prior is None else {"prior_std": prior}))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.tensor(_cycle(case["rho"], p.numel()), dtype=dtype).reshape(p.shape))
    x = torch.tensor(_cycle(case["x"], 2 * n_in), dtype=dtype, device=device).reshape(2, n_in)
    x[0] = 0.0
    x.requires_grad_(True)
    vh = None
    if kind.endswith("_var"):
        vh = torch.tensor(_cycle(case["v"], 2 * n_in), dtype=dtype, device=device).reshape(2, n_in)
        vh[0] = 0.0
        vh.requires_grad_(True)
    if isinstance(layer, CLTLinear):
        m, v = layer(x, vh)
        loss = m.sum() + (v.sum() if v is not None else 0.0)
    else:
        loss = layer(x).sum()
    if layer.weight_rho is not None:
        ws, bs = layer.std()
        for s in (ws, bs):
            if s is not None and not bool(((s > 0) & torch.isfinite(s)).all()):
                return math.inf
        loss = loss + layer.KL()[0]
    if not bool(torch.isfinite(loss)):
        return math.inf
    loss.backward()
    grads = [p.grad for p in layer.parameters()] + [x.grad] + ([vh.grad] if vh is not None else [])
    return 0.0 if all(gr is None or bool(torch.isfinite(gr).all()) for gr in grads) else math.inf


def _grad_examples(dtype: torch.dtype) -> Sequence[dict[str, Any]]:
    fmax = float(torch.finfo(dtype).max)
    b = c6_input_bound(dtype)
    base = {"act": "relu", "softplus": False, "bias": False, "x": [0.0], "v": [0.0], "seed": 0}
    return [
        {**base, "kind": "lr", "rho": [-4.6]},  # ObjectRL: NaN rho gradient at a zero input
        {**base, "kind": "lr", "rho": [fmax], "x": [1e3]},
        {**base, "kind": "bbb", "rho": [-fmax], "softplus": True},
        {**base, "kind": "cltdet_var", "rho": [0.0], "x": [1.0], "v": [0.0]},  # zero variance into the moments
        {**base, "kind": "clt", "rho": [-fmax, fmax], "x": [0.0, 1e3]},
        # the ends of C6's domain: |x| = v_h = max^(1/8) with the largest and smallest std and prior std
        {**base, "kind": "lr", "rho": [fmax], "x": [b, -b], "prior": b, "bias": True},
        {**base, "kind": "bbb", "rho": [fmax, -fmax], "x": [-b], "prior": 1.0 / b, "softplus": True},
        {**base, "kind": "clt_var", "rho": [fmax], "x": [b], "v": [b], "prior": b, "act": "crelu"},
        {**base, "kind": "cltdet_var", "rho": [-fmax, fmax], "x": [-b, b], "v": [b, 0.0], "prior": 1.0 / b},
        {**base, "kind": "clt_out", "rho": [fmax], "x": [b], "bias": True},
    ]


# ---- the conv layers: C1, C4-C6 carried over, CV1, CV2 ------------------------------------------------


def _conv_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    """A small conv layer and input: every padding mode and padding form, stride, dilation, groups; the posterior
    drawn as in :func:`_layer_cases`."""
    return st.fixed_dictionaries({
        "cin_g": st.integers(1, 3), "cout_g": st.integers(1, 3), "groups": st.integers(1, 2),
        "k": st.tuples(st.integers(1, 3), st.integers(1, 3)), "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "padding": st.sampled_from([0, 1, 2, (1, 0), (0, 2), "same", "valid"]),
        "mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]), "extra": st.integers(0, 2),
        "batch": st.integers(1, 2), "bias": st.booleans(), "softplus": st.booleans(),
        "seed": st.integers(0, 2**31 - 1), "mu_scale": log_uniform(1e-3, 1e2), "rho": st.floats(-8.0, 2.0),
        "rho_spread": st.floats(0.0, 2.0), "x_scale": log_uniform(1e-3, 1e2), "zero_rows": st.booleans(),
    })


def _conv_args(case: dict[str, Any]) -> dict[str, Any]:
    """The case's nn.Conv2d arguments ("same" forces stride 1, as nn.Conv2d requires)."""
    g = case["groups"]
    stride = (1, 1) if case["padding"] == "same" else case["stride"]
    return {"in_channels": case["cin_g"] * g, "out_channels": case["cout_g"] * g, "kernel_size": case["k"],
            "stride": stride, "padding": case["padding"], "dilation": case["dilation"], "groups": g,
            "padding_mode": case["mode"]}


def _make_conv(kind: str, case: dict[str, Any], device: torch.device, dtype: torch.dtype,
               **kw: Any) -> BayesianConv2d:
    """A conv layer of ``kind`` with parameters drawn from ``case['seed']`` as :func:`_make` draws them."""
    cls = CONV_TYPES[kind]
    extra: dict[str, Any] = {}
    if cls is CLTConv2d:
        extra = {"act": case.get("act", "relu"), "is_input": case.get("is_input", False),
                 "is_output": case.get("is_output", False)}
    layer = cls(**_conv_args(case), bias=case["bias"], use_softplus=case.get("softplus", False), device=device,
                dtype=dtype, **extra, **kw)
    g = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_mu"):
                v = torch.randn(p.shape, generator=g, dtype=torch.float64) * case.get("mu_scale", 1.0)
            else:
                v = case.get("rho", -2.0) + case.get("rho_spread", 1.0) * torch.randn(p.shape, generator=g,
                                                                                      dtype=torch.float64)
            p.copy_(v.to(dtype))
    return layer


def _conv_input(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(batch, C, H, W) with H, W >= d (k - 1) + 3: every window fits and every padding (<= 2 per side, or "same")
    is smaller than the input, as reflect padding needs."""
    a = _conv_args(case)
    hw = [a["dilation"][i] * (a["kernel_size"][i] - 1) + 3 + case["extra"] + i for i in (0, 1)]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(case["batch"], a["in_channels"], *hw, generator=g, dtype=torch.float64) * case.get("x_scale", 1.0)
    if case.get("zero_rows", False):
        x[0] = 0.0
    out: torch.Tensor = x.to(device=device, dtype=dtype)
    return out


def ref_conv(case: dict[str, Any], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``nn.Conv2d`` with the case's arguments, kernel ``w`` and bias ``b``, on ``x`` (torch's own layer, not the
    package's ``_conv``; float64 CPU when given float64 CPU tensors)."""
    ref = torch.nn.Conv2d(**_conv_args(case), bias=b is not None, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        ref.weight.copy_(w)
        if b is not None:
            assert ref.bias is not None
            ref.bias.copy_(b)
        out: torch.Tensor = ref(x)
    return out


def _conv_n(case: dict[str, Any]) -> int:
    """Terms of one output element's sum: the window's (C/g) kH kW kernel entries and the bias."""
    return int(case["cin_g"]) * int(case["k"][0]) * int(case["k"][1]) + 1


def _d64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double().cpu()


def _conv_kl_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda base, prior, pm, ps, equal: {**base, "prior": prior, "pm": pm, "ps": ps, "equal": equal},
        _conv_cases(dtype), st.sampled_from(["default", "int", "float", "0d", "one", "weight"]),
        st.floats(-3.0, 3.0), log_uniform(1e-2, 1e2), st.booleans(),
    )


def _run_conv_kl(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """C1 for a conv layer: the kernel takes the weight's place (a weight-shaped prior is kernel-shaped)."""
    a = _conv_args(case)
    shape = (a["out_channels"], case["cin_g"], *a["kernel_size"])
    layer = _make_conv("bbb", case, device, dtype, **_prior_args(case, dtype, shape))
    n = int(math.prod(shape)) + (int(a["out_channels"]) if case["bias"] else 0)
    return _kl_margin(layer, case, n, dtype)


def _run_conv_lr_identity(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """CV1 part 2: with the stored noise set to 1, LRConv2d's output minus its MAP output is its std, within the
    derived bound of sqrt(conv(x^2, sigma^2) + sigma_b^2) (float64, torch's nn.Conv2d, sigma from std_reference)."""
    layer = _make_conv("lr", case, device, dtype, manual_reset=True)
    x = _conv_input(case, device, dtype)
    layer.map(True)
    m = layer(x).detach()
    layer.map(False)
    layer._random_weight = torch.ones_like(m)
    d = (layer(x) - m).detach().double().cpu()
    assert layer.weight_rho is not None
    ws = std_reference(layer, layer.weight_rho)[0]
    bs = std_reference(layer, layer.bias_rho)[0] if layer.bias_rho is not None else None
    v = ref_conv(case, x.double().cpu().square(), ws.square(), None if bs is None else bs.square())
    s = v.sqrt()
    u = unit_roundoff(dtype)
    delta = std_rel_bound(layer, dtype)
    tiny = float(torch.finfo(dtype).tiny)
    # As C2: fl(m + s) - m within u |m + s| + u |d|; s: squares (2u), a k-term sum (gamma_k), sqrt (u); sigma delta.
    tol = 2 * u * (m.double().abs().cpu() + 2 * s) + (gamma(_conv_n(case) + 3, dtype) + 2 * u
                                                     + delta * (1 + delta)) * s
    return guarded(fold((d - s).abs() / (tol + math.sqrt(tiny))), d, m)


def _run_conv_bbb_sample(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """CV1 for BBBConv2d, the exact half: one call is the convolution with the kernel mu + sigma eps and the bias
    mu_b + sigma_b eps_b of its stored noise (float64 nn.Conv2d, sigma from std_reference). Bound: sigma within
    delta, the addcmul's two roundings (gamma_2) per kernel entry, then a k-term sum (gamma_k), all relative to
    the sum of absolute terms A = conv(|x|, |mu| + sigma |eps|) + |mu_b| + sigma_b |eps_b|."""
    layer = _make_conv("bbb", case, device, dtype, manual_reset=True)
    x = _conv_input(case, device, dtype)
    y = layer(x).detach().double().cpu()
    eps_w, eps_b = _d64(layer._random_weight), _d64(layer._random_bias)
    assert layer.weight_rho is not None and eps_w is not None
    ws = std_reference(layer, layer.weight_rho)[0]
    bs = std_reference(layer, layer.bias_rho)[0] if layer.bias_rho is not None else None
    wm, bm = (_d64(t) for t in layer.mean())
    assert wm is not None
    x64 = x.double().cpu()
    b = None if bm is None or bs is None or eps_b is None else bm + bs * eps_b
    ref = ref_conv(case, x64, wm + ws * eps_w, b)
    b_abs = None if bm is None or bs is None or eps_b is None else bm.abs() + bs * eps_b.abs()
    a = ref_conv(case, x64.abs(), wm.abs() + ws * eps_w.abs(), b_abs)
    delta = std_rel_bound(layer, dtype)
    g2, gk = gamma(2, dtype), gamma(_conv_n(case), dtype)
    tol = (gk + (g2 + delta * (1 + g2)) * (1 + gk)) * a
    tiny = float(torch.finfo(dtype).tiny)
    return guarded(fold((y - ref).abs() / (tol + tiny)), y, ref)


def _conv_clt_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, act, has_var, vs: {**base, "act": act, "has_var": has_var, "v_scale": vs},
                     _conv_cases(dtype), st.sampled_from(["relu", "crelu"]), st.booleans(), log_uniform(1e-4, 1e2))


def _run_conv_clt(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """CV2 parts 1 and 3: the propagated (m, v) against their float64 evaluation with torch's nn.Conv2d (sigma from
    std_reference), within C3's bounds with k = (C/g) kH kW + 1 terms; and the activation's moments are exactly
    relu_moments of (m, sqrt(v)) (CReLU: of m and -m, concatenated on the channels). The formula is checked for
    every padding mode; where it is the exact variance (part 1) and where not (part 2) is the Monte Carlo tests'."""
    pre = _make_conv("clt", {**case, "is_input": True, "is_output": True}, device, dtype)
    post = _make_conv("clt", {**case, "is_input": True, "is_output": False}, device, dtype)
    x = _conv_input(case, device, dtype)
    g = torch.Generator().manual_seed(case["seed"] + 3)
    vh = None
    if case["has_var"]:
        vh = (torch.rand(x.shape, generator=g, dtype=torch.float64) * case["v_scale"]).to(device=device, dtype=dtype)
    m, v = pre(x, vh)
    assert v is not None
    m, v = m.detach(), v.detach()
    if has_nan(m, v):
        return math.inf
    assert pre.weight_rho is not None
    ws = std_reference(pre, pre.weight_rho)[0]
    bs = std_reference(pre, pre.bias_rho)[0] if pre.bias_rho is not None else None
    wm, bm = (_d64(t) for t in pre.mean())
    assert wm is not None
    x64 = x.double().cpu()
    vh64 = torch.zeros_like(x64) if vh is None else vh.double().cpu()
    m_ref = ref_conv(case, x64, wm, bm)
    m_abs = ref_conv(case, x64.abs(), wm.abs(), None if bm is None else bm.abs())
    v_ref = (ref_conv(case, vh64 + x64.square(), ws.square(), None if bs is None else bs.square())
             + ref_conv(case, vh64, wm.square(), None))
    n = _conv_n(case)
    delta = std_rel_bound(pre, dtype)
    tiny = float(torch.finfo(dtype).tiny)
    margin_m = fold((m.double().cpu() - m_ref).abs() / (gamma(n, dtype) * m_abs + tiny))
    # The variance: 2k - 1 nonnegative terms (two convolutions and the bias), a third sum adding the two: C3's
    # gamma_(2k+6) covers the products, the sums and the final add.
    v_tol = (gamma(2 * n + 6, dtype) + delta * (2 + delta)) * (1 + gamma(2 * n + 6, dtype))
    margin_v = fold((v.double().cpu() - v_ref).abs() / (v_tol * v_ref + tiny))
    am, av = post(x, vh)
    s = torch.sqrt(v.clamp_min(torch.finfo(dtype).tiny))
    em, ev = CLTLinear.relu_moments(m, s)
    if case["act"] == "crelu":
        en, evn = CLTLinear.relu_moments(-m, s)
        em, ev = torch.cat([em, en], dim=-3), torch.cat([ev, evn], dim=-3)
    same = av is not None and bool(torch.equal(am, em)) and bool(torch.equal(av, ev))
    return fold(margin_m, margin_v, 0.0 if same else math.inf)


def _conv_map_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, kind, act, out, three: {**base, "kind": kind, "act": act, "is_output": out,
                                                          "three_d": three},
                     _conv_cases(dtype), st.sampled_from(sorted(CONV_TYPES)), st.sampled_from(["relu", "crelu"]),
                     st.booleans(), st.booleans())


def _run_conv_map(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """C4 for the conv layers: MAP mode is torch's nn.Conv2d with the means, bit for bit, (C, H, W) or (N, C, H, W)."""
    layer = _make_conv(case["kind"], {**case, "is_input": True}, device, dtype)
    layer.map(True)
    x = _conv_input(case, device, dtype)
    if case["three_d"]:
        x = x[0]
    wm, bm = layer.mean()
    ref = ref_conv(case, x, wm.detach(), None if bm is None else bm.detach())
    if isinstance(layer, CLTConv2d):
        a, b = layer(x)
        a2, b2 = layer(x)
        if b is not None or b2 is not None:
            return math.inf
        if not layer.is_output:
            ref = torch.relu(ref) if layer.act == "relu" else torch.cat([torch.relu(ref), torch.relu(-ref)], -3)
    else:
        a, a2 = layer(x), layer(x)
    return 0.0 if torch.equal(a, ref) and torch.equal(a2, ref) else math.inf


def _conv_reset_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, kind: {**base, "kind": kind}, _conv_cases(dtype), st.sampled_from(["bbb", "lr"]))


def _run_conv_reset(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """C5 for the conv layers, as :func:`_run_reset`."""
    layer = _make_conv(case["kind"], {**case, "rho": 0.0}, device, dtype, manual_reset=True)
    x = _conv_input(case, device, dtype) + 1.0
    torch.manual_seed(case["seed"])
    a, b = layer(x), layer(x)
    layer.reset_randomness()
    c = layer(x)
    layer.set_manual_reset(False)
    d, e = layer(x), layer(x)
    ok = torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(d, e)
    return 0.0 if ok else math.inf


def _conv_grad_cases(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    """C6's domain (:func:`_grad_cases`) for the conv kinds, with every padding mode."""
    return st.builds(lambda base, kind, mode: {**base, "kind": kind, "mode": mode}, _grad_cases(dtype),
                     st.sampled_from(["bbb", "lr", "clt", "clt_out", "clt_var"]),
                     st.sampled_from(["zeros", "reflect", "replicate", "circular"]))


def _run_conv_grads(case: dict[str, Any], device: torch.device, dtype: torch.dtype) -> float:
    """C6 for the conv layers: a 2-to-2-channel 2x2 kernel with padding 1 on a (2, 2, 3, 3) input whose first sample
    is 0; every gradient of output (+ variance) + KL finite, std in (0, inf)."""
    kind = case["kind"]
    base = {"cin_g": 2, "cout_g": 2, "groups": 1, "k": (2, 2), "stride": (1, 1), "dilation": (1, 1), "padding": 1,
            "mode": case["mode"], "bias": case["bias"], "softplus": case["softplus"], "seed": case["seed"],
            "act": case["act"], "is_input": kind in ("clt", "clt_out"), "is_output": kind == "clt_out"}
    prior = case.get("prior")
    layer = _make_conv(kind.split("_")[0], base, device, dtype, **({} if prior is None else {"prior_std": prior}))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.tensor(_cycle(case["rho"], p.numel()), dtype=dtype).reshape(p.shape))
    shape = (2, 2, 3, 3)
    x = torch.tensor(_cycle(case["x"], math.prod(shape)), dtype=dtype, device=device).reshape(shape)
    x[0] = 0.0
    x.requires_grad_(True)
    vh = None
    if kind.endswith("_var"):
        vh = torch.tensor(_cycle(case["v"], math.prod(shape)), dtype=dtype, device=device).reshape(shape)
        vh[0] = 0.0
        vh.requires_grad_(True)
    if isinstance(layer, CLTConv2d):
        m, v = layer(x, vh)
        loss = m.sum() + (v.sum() if v is not None else 0.0)
    else:
        loss = layer(x).sum()
    ws, bs = layer.std()
    for s_ in (ws, bs):
        if s_ is not None and not bool(((s_ > 0) & torch.isfinite(s_)).all()):
            return math.inf
    loss = loss + layer.KL()[0]
    if not bool(torch.isfinite(loss)):
        return math.inf
    loss.backward()
    grads = [p.grad for p in layer.parameters()] + [x.grad] + ([vh.grad] if vh is not None else [])
    return 0.0 if all(gr is None or bool(torch.isfinite(gr).all()) for gr in grads) else math.inf


def _conv_grad_examples(dtype: torch.dtype) -> Sequence[dict[str, Any]]:
    fmax = float(torch.finfo(dtype).max)
    b = c6_input_bound(dtype)
    base = {"act": "relu", "softplus": False, "bias": True, "x": [0.0], "v": [0.0], "seed": 0, "mode": "zeros"}
    return [
        {**base, "kind": "lr", "rho": [-4.6]},  # a zero input: LR's variance is sigma_b^2 or 0 only
        {**base, "kind": "lr", "rho": [fmax, -fmax], "x": [b, -b], "prior": b, "mode": "reflect"},
        {**base, "kind": "bbb", "rho": [-fmax], "softplus": True, "mode": "circular"},
        {**base, "kind": "clt_var", "rho": [fmax], "x": [b], "v": [b], "prior": 1.0 / b, "act": "crelu",
         "mode": "replicate"},
        {**base, "kind": "clt", "rho": [-fmax, fmax], "x": [0.0, 1e3], "bias": False},
    ]


register(
    Check("C1", "BayesianLinear.KL", _kl_cases, _run_kl, "|KL - mpmath| / (KL-1 bound + gamma_n)",
          examples=_kl_examples),
    Check("C2", "LRLinear", _layer_cases, _run_lr_identity, "|LR std - sqrt(x^2 s_W^2 + s_b^2)| / derived bound"),
    Check("C3", "CLTLinear", _clt_cases, _run_clt, "|moment - float64 exact| / gamma bound; activation identity"),
    Check("C4", "BayesianLinear", _map_cases, _run_map, "MAP output == F.linear of means (exact) ? 0 : inf"),
    Check("C4", "BayesianMLP", _mlp_cases, _run_mlp_map, "MAP output == deterministic net (exact) ? 0 : inf"),
    Check("C5", "BayesianLinear", _reset_cases, _run_reset, "noise kept until reset, fresh otherwise ? 0 : inf"),
    Check("C6", "BayesianLinear", _grad_cases, _run_grads, "all grads finite and std in (0, inf) ? 0 : inf",
          examples=_grad_examples),
    Check("C1", "BayesianConv2d.KL", _conv_kl_cases, _run_conv_kl, "|KL - mpmath| / (KL-1 bound + gamma_n)"),
    Check("C4", "BayesianConv2d", _conv_map_cases, _run_conv_map, "MAP output == nn.Conv2d of means (exact) ? 0 : inf"),
    Check("C5", "BayesianConv2d", _conv_reset_cases, _run_conv_reset,
          "noise kept until reset, fresh otherwise ? 0 : inf"),
    Check("C6", "BayesianConv2d", _conv_grad_cases, _run_conv_grads, "all grads finite and std in (0, inf) ? 0 : inf",
          examples=_conv_grad_examples),
    Check("CV1", "LRConv2d", _conv_cases, _run_conv_lr_identity,
          "|LR std - sqrt(conv(x^2, s_W^2) + s_b^2)| / derived bound"),
    Check("CV1", "BBBConv2d", _conv_cases, _run_conv_bbb_sample,
          "|BBB output - conv(x, mu + s eps) - b| / derived bound"),
    Check("CV2", "CLTConv2d", _conv_clt_cases, _run_conv_clt,
          "|moment - float64 exact| / gamma bound; activation identity"),
)
