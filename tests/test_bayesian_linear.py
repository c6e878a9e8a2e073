"""Tests of C1-C6 (proofs/bayesian_linear.md): Bayesian linear layers with ObjectRL's API.

The exact halves of the claims are checks in rln_verified/verify/bayesian_linear.py (thin tests below);
the Monte Carlo halves of C2 and C3 are here, with fixed seeds and z-bounds derived in ``_Z_MAX``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import ClassVar

import mpmath
import pytest
import torch
from torch import nn

from rln_verified._bayesian_linear import (
    BayesianLinear,
    BBBLinear,
    CLTLinear,
    CLTLinearDet,
    CReLU,
    LRLinear,
)
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified._bayesian_ops import (
    MomentConfig,
    SampleConfig,
    bbb_linear,
    clt_linear,
    clt_linear_det,
    fresh_noise,
    lr_linear,
)
from rln_verified._bayesian_std import INIT_STD, std_bounds
from rln_verified.functional import crelu_moments, relu_moments
from rln_verified.verify._core import assert_check

DTYPES = [torch.float64, torch.float32]

# z-bound for every Monte Carlo comparison. Each statistic below is a mean or a sample variance of S >= 2e4
# i.i.d. draws, standardized by its own standard error (for a variance, sqrt((m4 - s^4)/S) with m4 the
# sample fourth central moment: the delta-method error of s^2, valid without normality), so it is N(0, 1)
# up to O(1/sqrt S). P(|Z| > 5) = 5.7e-7; the largest family below (the depth-3 CReLU Gaussian-closure test)
# has at most 388 statistics, so a correct layer fails a test for at most 388 * 5.7e-7 = 2.2e-4 of seeds (a union
# bound). A variance off by 10% moves its z by 0.1 / sqrt(2/S) >= 10 (Gaussian case), far beyond the bound.
# Every test prints its sample size, number of statistics and worst |z| (pytest -s).
_Z_MAX = 5.0


def _z_mean(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """z of the sample mean against the exact (mean, var), over dim 0."""
    s = samples.shape[0]
    return (samples.mean(0) - mean) / torch.sqrt(var / s)


def _z_var(samples: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """z of the (biased) sample variance against the exact var; se from the fourth central moment."""
    s = samples.shape[0]
    c = samples - samples.mean(0)
    s2 = c.square().mean(0)
    m4 = c.pow(4).mean(0)
    return (s2 - var) / torch.sqrt((m4 - s2.square()) / s)


def _report_mc(what: str, s: int, n_stats: int, zs: dict[str, float]) -> None:
    """Print a Monte Carlo comparison's figures (visible with ``pytest -s``): sample size, number of statistics
    and the worst |z| of each kind."""
    worst = max(zs.values())
    detail = ", ".join(f"{k} {v:.2f}" for k, v in zs.items())
    print(f"\n[{what}] S = {s}, {n_stats} statistics, worst |z| = {worst:.2f} (bound {_Z_MAX}): {detail}")


def _posterior(layer: BayesianLinear, rho: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(rho + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))


def _sample_weights(layer: BayesianLinear, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    wm, bm = layer.mean()
    ws, bs = layer.std()
    assert bm is not None and bs is not None
    w = wm.detach() + ws.detach() * torch.randn((n, *wm.shape), generator=g, dtype=wm.dtype)
    b = bm.detach() + bs.detach() * torch.randn((n, *bm.shape), generator=g, dtype=bm.dtype)
    return w, b


# ---- thin property tests ----------------------------------------------------------------------------


@pytest.mark.claim("C1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_closed_form(device: str, dtype: torch.dtype) -> None:
    assert_check("C1", "BayesianLinear.KL", device, dtype)


@pytest.mark.claim("C2")
@pytest.mark.parametrize("dtype", DTYPES)
def test_lr_std_identity(device: str, dtype: torch.dtype) -> None:
    assert_check("C2", "LRLinear", device, dtype)


@pytest.mark.claim("C3")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clt_layer_moments(device: str, dtype: torch.dtype) -> None:
    assert_check("C3", "CLTLinear", device, dtype)


@pytest.mark.claim("C4")
@pytest.mark.parametrize("subject", ["BayesianLinear", "BayesianMLP"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_map_mode(subject: str, device: str, dtype: torch.dtype) -> None:
    assert_check("C4", subject, device, dtype)


@pytest.mark.claim("C5")
@pytest.mark.parametrize("dtype", DTYPES)
def test_manual_reset(device: str, dtype: torch.dtype) -> None:
    assert_check("C5", "BayesianLinear", device, dtype)


@pytest.mark.claim("C6")
@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_gradients(device: str, dtype: torch.dtype) -> None:
    assert_check("C6", "BayesianLinear", device, dtype)


# ---- C2: LR and BBB have the same output mean and variance (Monte Carlo) ------------------------------


@pytest.mark.claim("C2")
def test_lr_matches_bbb_monte_carlo(device: str) -> None:
    dt = torch.float64
    n_in, n_out, s = 8, 4, 20_000
    bbb = BBBLinear(n_in, n_out, device=device, dtype=dt)
    _posterior(bbb, -1.0, seed=11)
    lr = LRLinear(n_in, n_out, device=device, dtype=dt)
    lr.load_state_dict(bbb.state_dict())
    x = torch.linspace(-1.5, 2.0, n_in, dtype=dt, device=device).reshape(1, n_in)
    wm, bm = bbb.mean()
    wv, bv = bbb.var()
    assert bm is not None and bv is not None
    mean = (x @ wm.T + bm).detach()[0]
    var = (x.square() @ wv.T + bv).detach()[0]
    torch.manual_seed(12)
    with torch.no_grad():
        y_bbb = torch.cat([bbb(x) for _ in range(s)])  # one weight draw per call
        y_lr = lr(x.expand(s, n_in))  # independent noise per row
    zs = {
        "bbb mean": _z_mean(y_bbb, mean, var), "bbb var": _z_var(y_bbb, var),
        "lr mean": _z_mean(y_lr, mean, var), "lr var": _z_var(y_lr, var),
        "lr-bbb mean": (y_lr.mean(0) - y_bbb.mean(0)) / torch.sqrt((y_lr.var(0) + y_bbb.var(0)) / s),
        "lr-bbb var": (_z_var(y_lr, var) - _z_var(y_bbb, var)) / math.sqrt(2.0),
    }
    worst = {k: float(v.abs().max()) for k, v in zs.items()}
    _report_mc("C2 LR vs BBB", s, sum(v.numel() for v in zs.values()), worst)
    assert max(worst.values()) <= _Z_MAX, worst


# ---- C3: CLT moments (Monte Carlo) ---------------------------------------------------------------------


@pytest.mark.claim("C3")
def test_clt_preactivation_exact_monte_carlo(device: str) -> None:
    """Random input and random weights: the propagated (is_output) moments are the exact moments of W h + b."""
    dt = torch.float64
    n_in, n_out, s = 6, 3, 40_000
    layer = CLTLinear(n_in, n_out, is_output=True, device=device, dtype=dt)
    _posterior(layer, -0.7, seed=21)
    g = torch.Generator().manual_seed(22)
    mu_h = torch.randn(1, n_in, generator=g, dtype=dt)
    var_h = torch.rand(1, n_in, generator=g, dtype=dt) + 0.1
    with torch.no_grad():
        mean, var = layer(mu_h.to(device), var_h.to(device))
        layer_cpu = CLTLinear(n_in, n_out, is_output=True, dtype=dt)
        layer_cpu.load_state_dict(layer.state_dict())
        w, b = _sample_weights(layer_cpu, s, g)
        h = mu_h + var_h.sqrt() * torch.randn(s, n_in, generator=g, dtype=dt)
        a = torch.einsum("soi,si->so", w, h) + b
    assert var is not None
    mean, var = mean.cpu()[0], var.cpu()[0]
    worst = {"mean": float(_z_mean(a, mean, var).abs().max()), "var": float(_z_var(a, var).abs().max())}
    _report_mc("C3 one layer, pre-activation", s, 2 * n_out, worst)
    assert max(worst.values()) <= _Z_MAX, worst


@pytest.mark.claim("C3")
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_activation_exact_monte_carlo(device: str, act: str) -> None:
    """Deterministic input: W x + b is exactly Gaussian, so the ReLU/CReLU moments are exact."""
    dt = torch.float64
    n_in, n_out, s = 5, 4, 40_000
    layer = CLTLinear(n_in, n_out, act=act, is_input=True, dtype=dt)  # type: ignore[arg-type]
    _posterior(layer, -0.5, seed=31)
    g = torch.Generator().manual_seed(32)
    x = torch.randn(1, n_in, generator=g, dtype=dt)
    with torch.no_grad():
        mean, var = layer.to(device)(x.to(device))
        w, b = _sample_weights(layer.cpu(), s, g)
        a = torch.einsum("soi,i->so", w, x[0]) + b
        y = torch.relu(a) if act == "relu" else torch.cat([torch.relu(a), torch.relu(-a)], -1)
    assert var is not None
    mean, var = mean.cpu()[0], var.cpu()[0]
    worst = {"mean": float(_z_mean(y, mean, var).abs().max()), "var": float(_z_var(y, var).abs().max())}
    _report_mc(f"C3 one layer, after {act}", s, 2 * y.shape[1], worst)
    assert max(worst.values()) <= _Z_MAX, worst


def _linear_sample(layer: BayesianLinear, h: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """W h + b for one independent weight draw per row of h. Given h, the outputs of a layer with independent
    Gaussian weights are independent Gaussians N(h mu^T + mu_b, h^2 (s^2)^T + s_b^2) (C2, part 1), so drawing
    them so is the same joint distribution as drawing W per row, at S x out instead of S x out x in memory."""
    wm, bm = layer.mean()
    ws, bs = layer.std()
    assert bm is not None and bs is not None
    mean = h @ wm.detach().T + bm.detach()
    sd = (h.square() @ ws.detach().square().T + bs.detach().square()).sqrt()
    return mean + sd * torch.randn(mean.shape, generator=g, dtype=mean.dtype)


def _act(h: torch.Tensor, act: str, neg: torch.Tensor | None = None) -> torch.Tensor:
    """ReLU, or CReLU [relu(h), relu(-h')] with h' = h (the network) or an independent copy ``neg`` (the closure)."""
    if act == "relu":
        return torch.relu(h)
    return torch.cat([torch.relu(h), torch.relu(-(h if neg is None else neg))], -1)


def _mlp_monte_carlo(net: BayesianMLP, x: torch.Tensor, s: int, seed: int) -> torch.Tensor:
    """Predictive samples of a CLT BayesianMLP: an independent weight draw per sample, through the real network."""
    g = torch.Generator().manual_seed(seed)
    layers = net.bayesian_layers()
    h = x.expand(s, x.shape[-1])
    for i, layer in enumerate(layers):
        h = _linear_sample(layer, h, g)
        if i < len(layers) - 1:
            h = _act(h, net.act)
    return h


@pytest.mark.claim("C3")
@pytest.mark.parametrize("act", ["relu"])
def test_clt_mlp_depth2_exact_monte_carlo(act: str) -> None:
    """One ReLU hidden layer, deterministic input: the hidden units are independent with exact ReLU moments
    (their pre-activations are Gaussian), so the output moments are exact (C3, part 3). Not for CReLU:
    relu(a) and relu(-a) of one unit have covariance -E relu(a) E relu(-a) != 0, which the layer ignores."""
    dt = torch.float64
    torch.manual_seed(41)
    net = BayesianMLP(4, 3, depth=2, width=6, layer_type="clt", act=act, dtype=dt)  # type: ignore[arg-type]
    for i, layer in enumerate(net.bayesian_layers()):
        _posterior(layer, -0.8, seed=42 + i)
    x = torch.tensor([[0.5, -1.0, 1.5, 0.2]], dtype=dt)
    s = 40_000
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, tuple) and out[1] is not None
        mean, var = out[0][0], out[1][0]
        y = _mlp_monte_carlo(net, x, s, seed=43)
    worst = {"mean": float(_z_mean(y, mean, var).abs().max()), "var": float(_z_var(y, var).abs().max())}
    _report_mc("C3 depth-2 ReLU MLP, exact", s, 2 * y.shape[1], worst)
    assert max(worst.values()) <= _Z_MAX, worst


def _clt_moments(net: BayesianMLP, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]]:
    """Per layer, the CLT propagation's (pre-activation mean, var, output mean, var), as the network runs it."""
    out = []
    m: torch.Tensor = x
    v: torch.Tensor | None = None
    for layer in net.bayesian_layers():
        assert isinstance(layer, CLTLinear)
        was = layer.is_output
        layer.is_output = True
        pm, pv = layer(m, v)
        layer.is_output = was
        m, v = layer(m, v)
        assert pv is not None and v is not None
        out.append((pm[0], pv[0], m[0], v[0]))
    return out


def _mlp_net(depth: int, act: str) -> tuple[BayesianMLP, torch.Tensor]:
    dt = torch.float64
    torch.manual_seed(51)
    net = BayesianMLP(4, 2, depth=depth, width=32, layer_type="clt", act=act, dtype=dt)  # type: ignore[arg-type]
    for i, layer in enumerate(net.bayesian_layers()):
        _posterior(layer, -2.0, seed=52 + i)  # std ~ exp(-2) = 0.13
        with torch.no_grad():
            layer.weight_mu.mul_(1.0 / math.sqrt(layer.in_features))
    return net, torch.tensor([[0.5, -1.0, 1.5, 0.2]], dtype=dt)


_MLP_CASES = [(2, "crelu"), (3, "relu"), (3, "crelu")]
# A unit's activation statistics enter the closure test only when >= 1000 of the S samples are expected to be
# nonzero: the sample mean is then a sum of >= 1000 (Poisson many) nonzero draws, whose standardized skewness is
# <= 1/sqrt(1000) = 0.03 of the draws' own, so the normal tail of _Z_MAX applies (Berry-Esseen).
_MIN_HITS = 1000


@pytest.mark.claim("C3")
@pytest.mark.parametrize("depth, act", _MLP_CASES)
def test_clt_mlp_gaussian_closure_exact_monte_carlo(depth: int, act: str) -> None:
    """Deeper (and CReLU) networks, where the CLT is an approximation of the network (C3, part 4), propagate
    *exactly* the moments of the Gaussian-closure process that the CLT layers assume: at each layer, the
    previous pre-activations are replaced by independent Gaussians with the propagated (mean, var) (CReLU: its
    two halves by independent copies), the activation is applied, and fresh weights are drawn. Per layer that is
    exact (C3, parts 1 and 2: independent inputs with the propagated moments, exact ReLU/CReLU moments of a
    Gaussian), so every propagated moment must match Monte Carlo of the closure process up to the z-bound
    ``_Z_MAX`` (derivation at its definition) -- no approximation enters the asserted quantity.

    Checked per layer l: the activation's output moments against samples of act(z), z ~ N(pre_{l-1}), and the
    pre-activation moments of layer l against samples of W_l act(z) + b_l. Statistics: a mean and a variance z
    per unit, at most 2(32 + 64 + 32 + 64 + 2) = 388 (depth 3, CReLU), so a correct implementation fails for at
    most 388 * 5.7e-7 = 2.2e-4 of seeds (``_Z_MAX``)."""
    net, x = _mlp_net(depth, act)
    s = 20_000
    g = torch.Generator().manual_seed(53)
    zs: dict[str, float] = {}
    with torch.no_grad():
        moments = _clt_moments(net, x)
        out = net(x)
        assert isinstance(out, tuple) and out[1] is not None
        # The per-layer moments are the network's own: its output is the last layer's.
        assert torch.equal(out[0][0], moments[-1][2]) and torch.equal(out[1][0], moments[-1][3])
        layers = net.bayesian_layers()
        h = x.expand(s, x.shape[-1])
        n_stats = skipped = 0
        for i, layer in enumerate(layers):
            if i > 0:
                pm, pv, om, ov = moments[i - 1]
                z = pm + pv.sqrt() * torch.randn((s, pm.shape[0]), generator=g, dtype=pm.dtype)
                neg = pm + pv.sqrt() * torch.randn((s, pm.shape[0]), generator=g, dtype=pm.dtype)
                h = _act(z, act, neg)
                # The z of a unit that is almost always 0 is not normal (a sum of a Poisson number of draws): keep
                # the units with >= _MIN_HITS expected nonzero samples, P(act > 0) = Phi(+-mean/sd) exactly.
                k = pm / pv.sqrt()
                p_pos = torch.special.ndtr(k) if act == "relu" else torch.cat([torch.special.ndtr(k),
                                                                              torch.special.ndtr(-k)])
                keep = s * p_pos >= _MIN_HITS
                skipped += int((~keep).sum())
                zs[f"layer {i} act mean"] = float(_z_mean(h[:, keep], om[keep], ov[keep]).abs().max())
                zs[f"layer {i} act var"] = float(_z_var(h[:, keep], ov[keep]).abs().max())
                n_stats += 2 * int(keep.sum())
            a = _linear_sample(layer, h, g)
            pm, pv, _, _ = moments[i]
            zs[f"layer {i + 1} pre mean"] = float(_z_mean(a, pm, pv).abs().max())
            zs[f"layer {i + 1} pre var"] = float(_z_var(a, pv).abs().max())
            n_stats += 2 * a.shape[1]
    _report_mc(f"C3 depth-{depth} {act} MLP, Gaussian closure (exact; {skipped} rarely-active units' activation "
               f"statistics left out)", s, n_stats, zs)
    assert max(zs.values()) <= _Z_MAX, zs


# No claim marker: a report is not a check of C3 (only finiteness and positivity are asserted, C6's business).
@pytest.mark.parametrize("depth, act", _MLP_CASES)
def test_clt_mlp_end_to_end_report(depth: int, act: str) -> None:
    """REPORT ONLY, NOT ASSERTED: how far the CLT predictive moments are from Monte Carlo of the real network
    (C3, part 4). The gap is the Gaussian closure itself (non-Gaussian sums of products, units correlated by shared
    inputs, correlated CReLU halves), which no theorem bounds; it is printed with its Monte Carlo standard errors
    (visible with ``pytest -s``). The asserted, exact counterpart is the closure test above. Only finiteness and
    positivity of the predictive variance are asserted here."""
    net, x = _mlp_net(depth, act)
    s = 20_000
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, tuple) and out[1] is not None
        mean, var = out[0][0], out[1][0]
        y = _mlp_monte_carlo(net, x, s, seed=53)
    assert bool(torch.isfinite(mean).all()) and bool((var > 0).all())
    mc_mean, mc_var = y.mean(0), y.var(0)
    c = y - mc_mean
    se_mean = torch.sqrt(mc_var / s)
    se_var = torch.sqrt((c.pow(4).mean(0) - mc_var.square()) / s)
    scale = mean.abs().clamp_min(mc_var.sqrt())  # relative to |mean|, or to the spread where the mean is ~0
    rel_mean = ((mean - mc_mean).abs() / scale).max()
    rel_var = ((var - mc_var).abs() / mc_var).max()
    z_mean = ((mean - mc_mean).abs() / se_mean).max()
    z_var = ((var - mc_var).abs() / se_var).max()
    print(f"\n[C3 report, not asserted] depth-{depth} {act} MLP, end to end, S = {s}: |CLT - MC| / max(|mean|, sd) "
          f"<= {float(rel_mean):.4f} (z {float(z_mean):.2f}), |CLT - MC| / var <= {float(rel_var):.4f} "
          f"(z {float(z_var):.2f})")


# ---- C1, C4: API details the checks rely on --------------------------------------------------------------


@pytest.mark.claim("C1")
@pytest.mark.parametrize(
    "pm, ps",
    [(1, 2), (0.5, 2.5), (torch.tensor(0.5), torch.tensor(2.0)), (torch.tensor([0.5]), torch.tensor([2.0])),
     (torch.zeros(3, 4), torch.full((3, 4), 2.0))],
)
def test_prior_forms_accepted(pm: object, ps: object) -> None:
    layer = LRLinear(4, 3, prior_mean=pm, prior_std=ps)  # type: ignore[arg-type]
    assert layer.prior_std.shape in ((1,), (3, 4))
    kl, n = layer.KL()
    assert n == 3 * 4 + 3 and bool(torch.isfinite(kl)) and float(kl.detach()) > 0


@pytest.mark.claim("C1")
@pytest.mark.parametrize(
    "kwargs, needle",
    [({"prior_std": 0.0}, "prior_std must be > 0"), ({"prior_std": -1}, "prior_std must be > 0"),
     ({"prior_std": torch.tensor([1.0, -1.0])}, "one-element tensor or weight-shaped"),
     ({"prior_mean": torch.zeros(4, 3)}, "weight-shaped (3, 4)"), ({"prior_mean": "0"}, "int, a float or a tensor"),
     ({"prior_std": float("inf")}, "finite")],
)
def test_bad_priors_raise(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        BBBLinear(4, 3, **kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


@pytest.mark.claim("C6")
@pytest.mark.parametrize("use_softplus", [False, True])
def test_init_follows_objectrl(use_softplus: bool) -> None:
    torch.manual_seed(0)
    layer = BBBLinear(16, 8, use_softplus=use_softplus, dtype=torch.float64)
    ws, bs = layer.std()
    assert bs is not None
    assert torch.allclose(ws, torch.full_like(ws, INIT_STD), rtol=1e-12)
    assert torch.allclose(bs, torch.full_like(bs, INIT_STD), rtol=1e-12)
    bound = 1.0 / math.sqrt(16)  # kaiming_uniform(a=sqrt 5) on fan_in 16 gives the same bound as the bias
    assert float(layer.weight_mu.abs().max()) <= bound and float(layer.bias_mu.abs().max()) <= bound  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_tensor_prior_std_must_be_positive_and_finite(bad: float) -> None:
    """A weight-shaped tensor prior std with one bad element is refused, as a number is."""
    std = torch.ones(3, 4)
    std[1, 2] = bad
    with pytest.raises(ValueError, match="prior_std must be > 0 and finite"):
        BBBLinear(4, 3, prior_std=std)
    layer = BBBLinear(4, 3)
    with pytest.raises(ValueError, match="prior_std must be > 0 and finite"):
        layer.update_prior(0.0, std)


def test_bias_means_fill_the_objectrl_interval() -> None:
    """Bias means are uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)] (nn.Linear's rule): none outside, and with 4096 draws
    the largest |b| exceeds 0.9/sqrt(fan_in) (probability of not doing so: 0.9^4096 < 1e-187), so a narrower
    interval such as 1/fan_in fails."""
    torch.manual_seed(0)
    fan_in = 64
    layer = BBBLinear(fan_in, 4096, dtype=torch.float64)
    assert layer.bias_mu is not None
    bound = 1.0 / math.sqrt(fan_in)
    top = float(layer.bias_mu.abs().max())
    assert top <= bound and top > 0.9 * bound


@pytest.mark.claim("C6")
@pytest.mark.parametrize("dtype", DTYPES)
def test_std_bounds_keep_std_positive_and_finite(dtype: torch.dtype) -> None:
    """C6 as stated, from the dtype's own constants (not from std_bounds()): every finite rho gives a std in
    [tiny^(1/4), max^(1/8)], saturating at those ends, and in between the std is the float64 closed form exp(rho) or
    softplus(rho) (std_reference) within std_rel_bound."""
    from rln_verified.verify.bayesian_linear import std_reference, std_rel_bound

    fi = torch.finfo(dtype)
    with mpmath.workdps(40):
        lo, hi = float(mpmath.mpf(fi.tiny) ** 0.25), float(mpmath.mpf(fi.max) ** 0.125)
    fmax = float(fi.max)
    u = fi.eps / 2
    for soft in (False, True):
        layer = BBBLinear(3, 2, use_softplus=soft, dtype=dtype)
        rho = torch.tensor([[-fmax, fmax, -1e4], [fmax / 2, 0.0, -3.0]], dtype=dtype)
        with torch.no_grad():
            layer.weight_rho.copy_(rho)  # type: ignore[union-attr]
        ws, _ = layer.std()
        got = ws.detach().double()
        assert bool(((got > 0) & torch.isfinite(got)).all())
        # Saturated: the clamp bound ln(b) (or inv_softplus(b)) is rounded to the dtype (u |ln b|), then exp rounds
        # (u): within (|ln b| + 1) u of b, doubled for the float64 -> dtype conversion of the bound.
        lo_tol, hi_tol = 2 * (abs(math.log(lo)) + 1) * u, 2 * (abs(math.log(hi)) + 1) * u
        for i, want, tol in ((0, lo, lo_tol), (2, lo, lo_tol)):
            assert abs(float(got.reshape(-1)[i]) / want - 1) <= tol, (soft, i, float(got.reshape(-1)[i]), want)
        for i, want, tol in ((1, hi, hi_tol), (3, hi, hi_tol)):
            assert abs(float(got.reshape(-1)[i]) / want - 1) <= tol, (soft, i, float(got.reshape(-1)[i]), want)
        assert float(got.min()) >= lo * (1 - lo_tol) and float(got.max()) <= hi * (1 + hi_tol)
        # Unsaturated: the closed form, independently evaluated.
        assert layer.weight_rho is not None
        ref = std_reference(layer, layer.weight_rho)[0]
        inner = got.reshape(-1)[4:] / ref.reshape(-1)[4:] - 1
        assert float(inner.abs().max()) <= std_rel_bound(layer, dtype), (soft, inner)


def test_bias_false_registers_none() -> None:
    layer = LRLinear(3, 2, bias=False)
    assert layer.bias_mu is None and layer.bias_rho is None
    assert set(layer.state_dict()) == {"weight_mu", "weight_rho", "prior_mean", "prior_std"}
    assert layer.KL()[1] == 6


def test_cltdet_has_no_std() -> None:
    layer = CLTLinearDet(3, 2)
    assert layer.weight_rho is None and layer.bias_rho is None
    assert "weight_rho" not in dict(layer.named_parameters())
    for fn in (layer.std, layer.var, layer.KL):
        with pytest.raises(ValueError, match="no"):
            fn()
    mu = torch.randn(4, 3)
    var = torch.rand(4, 3)
    layer.is_output = True
    _, v = layer(mu, var)
    assert v is not None
    torch.testing.assert_close(v, var @ layer.weight_mu.detach().square().T)


def test_crelu_module() -> None:
    x = torch.tensor([[-1.0, 2.0]])
    assert torch.equal(CReLU()(x), torch.tensor([[0.0, 2.0, 1.0, 0.0]]))


def test_clt_static_methods_are_the_kernels() -> None:
    assert CLTLinear.relu_moments is relu_moments and CLTLinear.crelu_moments is crelu_moments


@pytest.mark.parametrize("bad", ["tanh", "ReLU", ""])
def test_bad_act_raises_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="act must be 'relu' or 'crelu'"):
        CLTLinear(3, 2, act=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="act must be"):
        BayesianMLP(3, 2, 2, 4, "clt", act=bad)  # type: ignore[arg-type]


def test_clt_call_contract() -> None:
    layer = CLTLinear(3, 2)
    with pytest.raises(ValueError, match="var_h is required"):
        layer(torch.randn(1, 3))
    layer.map(True)
    with pytest.raises(ValueError, match="MAP mode"):
        layer(torch.randn(1, 3), torch.rand(1, 3))


@pytest.mark.parametrize("layer_type", ["bbb", "lr", "clt", "cltdet"])
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_mlp_shapes_and_kl(layer_type: str, act: str) -> None:
    net = BayesianMLP(5, 3, depth=3, width=4, layer_type=layer_type, act=act)  # type: ignore[arg-type]
    out = net(torch.randn(7, 5))
    m = out[0] if isinstance(out, tuple) else out
    assert m.shape == (7, 3)
    kl, n = net.get_kl()
    mult = 2 if act == "crelu" else 1
    expect = 0 if layer_type == "cltdet" else (5 * 4 + 4) + (4 * mult * 4 + 4) + (4 * mult * 3 + 3)
    assert n == expect
    assert bool(torch.isfinite(kl))


def test_mlp_has_norm() -> None:
    from rln_verified import BayesianRLayerNorm

    net = BayesianMLP(5, 3, depth=3, width=4, layer_type="lr", has_norm=True)
    assert net.has_norm is True and BayesianMLP(5, 3, depth=2, width=4).has_norm is False
    assert sum(isinstance(m, BayesianRLayerNorm) for m in net.model) == 2
    out = net(torch.randn(7, 5))
    assert isinstance(out, torch.Tensor) and out.shape == (7, 3)
    narrow = BayesianMLP(5, 3, depth=2, width=2, layer_type="bbb", has_norm=True)  # the smallest width allowed
    assert narrow(torch.randn(7, 5)).shape == (7, 3)
    # the norm layers carry no affine (the next Bayesian layer has one) and follow the MLP's dtype and device
    for kw in ({"dtype": torch.float64}, {"device": "meta"}):
        net = BayesianMLP(5, 3, depth=3, width=4, layer_type="bbb", has_norm=True, **kw)  # type: ignore[arg-type]
        norms = [m for m in net.model if isinstance(m, BayesianRLayerNorm)]
        assert len(norms) == 2
        for m in norms:
            assert m.elementwise_affine is False and m.weight is None and m.bias is None
            assert m.lambda_raw.dtype == kw.get("dtype", torch.float32)
            assert m.lambda_raw.is_meta == ("device" in kw)
    with pytest.raises(ValueError, match="not available for CLT"):
        BayesianMLP(5, 3, depth=3, width=4, layer_type="clt", has_norm=True)


@pytest.mark.parametrize("layer_type", ["bbb", "lr", "clt"])
def test_elbo_training_reduces_loss(layer_type: str) -> None:
    """The docs' ELBO recipe trains every layer type (a smoke test of the whole gradient path)."""
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 64).unsqueeze(1)
    y = torch.sin(2 * x)
    net = BayesianMLP(1, 1, depth=3, width=16, layer_type=layer_type)  # type: ignore[arg-type]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        out = net(x)
        if isinstance(out, tuple):
            m, v = out
            assert v is not None
            nll = 0.5 * ((y - m).square() / (v + 0.01) + torch.log(v + 0.01)).mean()
        else:
            nll = 0.5 * (y - out).square().mean() / 0.01
        kl, _ = net.get_kl()
        return nll + kl / x.shape[0]

    first = float(loss_fn().detach())
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < first


def test_nn_linear_equivalence_in_map() -> None:
    lin = nn.Linear(3, 2)
    layer = BBBLinear(3, 2)
    with torch.no_grad():
        layer.weight_mu.copy_(lin.weight)
        layer.bias_mu.copy_(lin.bias)  # type: ignore[union-attr]
    layer.map()
    x = torch.randn(4, 3)
    assert torch.equal(layer(x), lin(x))


# ---- the fused autograd nodes (CLTPreact, LRSample, BBBSample, ExpStd) against the autograd forms -----------


def _std_ref(layer: BayesianLinear, rho: torch.Tensor) -> torch.Tensor:
    """The std as the plain autograd form: exp(clamp(rho)) (or softplus) with clamp's gradient."""
    lo, hi = std_bounds(rho.dtype)
    if layer.use_softplus:
        from rln_verified._special import inv_softplus, softplus

        return softplus(rho.clamp(float(inv_softplus(torch.tensor(lo, dtype=torch.float64))), hi))
    return torch.exp(rho.clamp(math.log(lo), math.log(hi)))


def _clt_ref(layer: CLTLinear, x: torch.Tensor, vh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CLTLinear's forward written with F.linear and autograd (the form before the fused node)."""
    import torch.nn.functional as F

    wm, bm = layer.weight_mu, layer.bias_mu
    assert layer.weight_rho is not None
    wv = _std_ref(layer, layer.weight_rho).square()
    bv = _std_ref(layer, layer.bias_rho).square() if layer.bias_rho is not None else None
    m = F.linear(x, wm, bm)
    v = F.linear(x.square(), wv, bv) if vh is None else F.linear(vh + x.square(), wv, bv) + F.linear(vh, wm.square())
    if layer.is_output:
        return m, v
    s = torch.sqrt(v.clamp_min(torch.finfo(v.dtype).tiny))
    return relu_moments(m, s) if layer.act == "relu" else crelu_moments(m, s)


def _leaves(layer: nn.Module, *xs: torch.Tensor | None) -> list[torch.Tensor]:
    return list(layer.parameters()) + [x for x in xs if x is not None]


def _grads(out: tuple[torch.Tensor, ...], leaves: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in out]
    return list(torch.autograd.grad(list(out), leaves, gs, allow_unused=True))


@pytest.mark.claim("C3", "RELU-6", "EXP-1")
@pytest.mark.parametrize("act", ["relu", "crelu"])
@pytest.mark.parametrize("variant", ["var", "input", "nobias", "softplus", "output", "3d", "saturated"])
def test_clt_fused_node_matches_autograd_form(act: str, variant: str) -> None:
    """float64: the fused node's moments equal the F.linear form (the variance up to the order of its two sums,
    <= 4 u relative here) and its gradients agree to 1e-10 relative, for every configuration."""
    dt = torch.float64
    kw = {"bias": variant != "nobias", "use_softplus": variant == "softplus", "is_input": variant == "input",
          "is_output": variant == "output"}
    layer = CLTLinear(6, 5, act=act, dtype=dt, **kw)  # type: ignore[arg-type]
    _posterior(layer, -1.0, seed=3)
    if variant == "saturated":
        with torch.no_grad():
            assert layer.weight_rho is not None
            layer.weight_rho[0, :3] = torch.tensor([1e30, -1e30, 1e30], dtype=dt)
    g = torch.Generator().manual_seed(4)
    shape = (2, 3, 6) if variant == "3d" else (4, 6)
    x = torch.randn(shape, generator=g, dtype=dt).requires_grad_(True)
    vh = None if variant == "input" else torch.rand(shape, generator=g, dtype=dt).requires_grad_(True)
    got = layer(x, vh)
    want = _clt_ref(layer, x, vh)
    assert got[1] is not None
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=8 * 2.0**-53, atol=0.0)
    leaves = _leaves(layer, x, vh)
    ga = _grads((got[0], got[1]), leaves, 9)
    gb = _grads(want, leaves, 9)
    for a, b in zip(ga, gb):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if variant == "saturated":
        assert layer.weight_rho is not None
        gr = ga[next(i for i, p in enumerate(leaves) if p is layer.weight_rho)]
        assert gr is not None and bool((gr[0, :3] == 0).all())  # clamp's zero gradient (C6)


@pytest.mark.claim("C3", "RELU-6", "EXP-1")
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_fused_float32_is_the_kernel_composition(act: str) -> None:
    """float32 on CPU: the node's output is bit for bit relu_moments(m, safe_sqrt(v)) of its own pre-activation
    moments (C3's activation identity), and its gradients are within a few float32 ulps of the composed autograd
    graph's."""
    pre = CLTLinear(7, 5, act=act, is_output=True)
    post = CLTLinear(7, 5, act=act)
    _posterior(pre, -2.0, seed=6)
    post.load_state_dict(pre.state_dict())
    g = torch.Generator().manual_seed(8)
    x = torch.randn(9, 7, generator=g).requires_grad_(True)
    vh = torch.rand(9, 7, generator=g).requires_grad_(True)
    m, v = pre(x, vh)
    assert v is not None
    s = torch.sqrt(v.clamp_min(torch.finfo(torch.float32).tiny))
    want = relu_moments(m, s) if act == "relu" else crelu_moments(m, s)
    got = post(x, vh)
    assert got[1] is not None
    assert torch.equal(got[0], want[0].detach()) and torch.equal(got[1], want[1].detach())
    ga = _grads((got[0], got[1]), _leaves(post, x, vh), 2)
    gb = _grads(want, _leaves(pre, x, vh), 2)
    for a, b in zip(ga, gb):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=3e-6, atol=1e-6)


def _noise_from(layer: BayesianLinear, eps_w: torch.Tensor, eps_b: torch.Tensor | None = None) -> None:
    layer.set_manual_reset(True)
    layer._random_weight = eps_w
    layer._random_bias = eps_b


@pytest.mark.claim("C2", "C6", "EXP-1")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["plain", "nobias_zero_rows", "softplus", "saturated", "3d"])
def test_lr_fused_node_matches_autograd_form(dtype: torch.dtype, variant: str) -> None:
    """LRLinear's one-node sample equals F.linear + safe_sqrt + addcmul with the same noise bit for bit, and its
    gradients agree (float64: 1e-10 relative; float32: a few ulps), zero-variance rows and saturated rho
    included."""
    import torch.nn.functional as F

    layer = LRLinear(6, 4, bias=variant != "nobias_zero_rows", use_softplus=variant == "softplus", dtype=dtype)
    _posterior(layer, -1.5, seed=21)
    if variant == "saturated":
        with torch.no_grad():
            assert layer.weight_rho is not None
            layer.weight_rho[1, :2] = torch.tensor([1e30, -1e30], dtype=dtype)
    g = torch.Generator().manual_seed(22)
    shape = (2, 3, 6) if variant == "3d" else (5, 6)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if variant == "nobias_zero_rows":
        x[0] = 0.0
    x.requires_grad_(True)
    eps = torch.randn((*shape[:-1], 4), generator=g, dtype=torch.float64).to(dtype)
    _noise_from(layer, eps)
    got = layer(x)
    wm, bm = layer.mean()
    assert layer.weight_rho is not None
    wv = _std_ref(layer, layer.weight_rho).square()
    bv = _std_ref(layer, layer.bias_rho).square() if layer.bias_rho is not None else None
    v = F.linear(x.square(), wv, bv)
    want = torch.addcmul(F.linear(x, wm, bm), torch.sqrt(v.clamp_min(torch.finfo(dtype).tiny)), eps)
    if dtype == torch.float64 or variant == "softplus":
        assert torch.equal(got, want)
    else:  # float32 on CPU: the std's exp is EXP-1's (within 1 ulp of torch's), through sqrt and a sum of 7
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    leaves = _leaves(layer, x)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for a, b in zip(_grads((got,), leaves, 5), _grads((want,), leaves, 5)):
        assert a is not None and b is not None
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.claim("C5", "C6", "EXP-1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bbb_fused_weight_matches_autograd_form(dtype: torch.dtype) -> None:
    """BBBLinear's one-node sample equals F.linear(x, addcmul(mu, std, eps), ...) with the same noise bit for bit
    (std being the layer's own std()), and the gradients agree; a saturated rho gets gradient 0."""
    import torch.nn.functional as F

    layer = BBBLinear(5, 3, dtype=dtype)
    _posterior(layer, -2.0, seed=31)
    with torch.no_grad():
        assert layer.weight_rho is not None
        layer.weight_rho[0, 0] = 1e30
    g = torch.Generator().manual_seed(32)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    ew = torch.randn(3, 5, generator=g, dtype=torch.float64).to(dtype)
    eb = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
    _noise_from(layer, ew, eb)
    got = layer(x)
    ws, bs = layer.std()
    assert bs is not None and layer.bias_mu is not None
    want = F.linear(x, torch.addcmul(layer.weight_mu, ws, ew), torch.addcmul(layer.bias_mu, bs, eb))
    assert torch.equal(got, want)
    leaves = _leaves(layer, x)
    ga, gb = _grads((got,), leaves, 7), _grads((want,), leaves, 7)
    for a, b in zip(ga, gb):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0.0)
    assert layer.weight_rho.grad is None
    g_rho = ga[next(i for i, p in enumerate(leaves) if p is layer.weight_rho)]
    assert g_rho is not None and float(g_rho[0, 0]) == 0.0


@pytest.mark.claim("EXP-1", "C6")
def test_std_var_and_forward_share_one_sigma() -> None:
    """float32 on CPU: std(), var() = std()**2 bit for bit, and the CLT node's sigma^2 are the same values; the
    std's gradient is sigma inside the clamp range and 0 outside (C6)."""
    from rln_verified._bayesian_std import squared_std
    from rln_verified._native import gauss

    layer = CLTLinear(64, 70)  # 4480 elements: the fused path for any size
    _posterior(layer, -3.0, seed=41)
    ws, bs = layer.std()
    wv, bv = layer.var()
    assert bs is not None and bv is not None
    assert torch.equal(wv, ws * ws) and torch.equal(bv, bs * bs)
    assert layer.weight_rho is not None
    lo, hi = std_bounds(torch.float32)
    sq, mask, _ = squared_std(layer.weight_rho.detach(), math.log(lo), math.log(hi))
    assert mask is None and torch.equal(sq, wv.detach())
    if gauss.available():  # EXP-1: the kernel's exp, within 1 ulp of the float64 exp
        ref = torch.exp(layer.weight_rho.detach().double())
        assert float(((ws.detach().double() - ref).abs() / ref).max()) <= 2.0**-23
    rho = torch.tensor([-1e30, -4.0, 0.0, 1e30], requires_grad=True)
    small = BBBLinear(2, 2)
    sd = small._std_of(rho)
    (g,) = torch.autograd.grad(sd.sum(), rho)
    assert float(g[0]) == 0.0 and float(g[3]) == 0.0 and torch.equal(g[1:3], sd.detach()[1:3])


# ---- the graph path (create_graph=True), safe_sqrt at the fused size, and the contracts users see --------------
# Each fused node (BBBSample, LRSample, CLTPreact, _SafeSqrt), asked for a graph, returns the VJP of its plain form
# (_bbb_plain, _lr_plain, _clt_plain, safe_sqrt_plain): these tests reach those forms and compare first derivatives
# (built as a graph) and second derivatives with the same derivatives of the F.linear reference forms above.

U32 = 2.0**-24  # float32 unit roundoff


def _first_and_second(outs: tuple[torch.Tensor, ...], leaves: list[torch.Tensor],
                      seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """First derivatives of a random projection of ``outs`` with create_graph=True, then the derivatives of a random
    projection of those (a Hessian-vector product). A missing derivative counts as zeros."""
    g = torch.Generator().manual_seed(seed)
    cot = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    dirs = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in leaves]
    first = torch.autograd.grad(list(outs), leaves, cot, create_graph=True, allow_unused=True)
    first_z = [torch.zeros_like(p) if f is None else f for f, p in zip(first, leaves)]
    proj = sum((f * d).sum() for f, d in zip(first_z, dirs) if f.requires_grad)
    assert isinstance(proj, torch.Tensor)
    second = torch.autograd.grad(proj, leaves, allow_unused=True)
    return [f.detach() for f in first_z], [torch.zeros_like(p) if s is None else s for s, p in zip(second, leaves)]


def _assert_derivatives_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float) -> None:
    """Each derivative within ``rtol`` of the largest element of its reference (both are sums of the same terms in
    another order)."""
    for a, b in zip(got, want, strict=True):
        scale = float(b.abs().max()) if b.numel() else 0.0
        assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


def _saturate(rho: torch.Tensor, idx: tuple[int | slice, ...] | slice, dtype: torch.dtype) -> None:
    """Put rho above the clamp range and just below it (ln lo - 1, where the clamp still acts: C6)."""
    lo, _ = std_bounds(dtype)
    with torch.no_grad():
        vals = torch.tensor([1e30, math.log(lo) - 1.0], dtype=dtype)
        rho[idx] = vals


# float64: every derivative is a sum of at most 3 * 6 products over the same terms in another order; 2^-53 per
# rounding times 64 (18 terms, a factor 2 for each of two orders of differentiation, rounded up) is below 1e-14; we
# take 1e-12 relative to the largest element (the existing first-order checks above use 1e-10 to 1e-12).
_F64_RTOL = 1e-12
# float32 against the float64 reference: each element is a sum of at most 18 products, each rounded a few times
# (the std's exp within 1 ulp, EXP-1; the RELU-6 forms within a few ulps): 4 * 18 * u32 of the largest element.
_F32_RTOL = 4 * 18 * U32


@pytest.mark.claim("C3", "C6", "RELU-6")
@pytest.mark.parametrize("variant", ["var", "input", "nobias", "softplus", "saturated", "f32-relu", "f32-crelu",
                                     "f32-input-crelu"])
def test_clt_fused_node_second_order_is_the_plain_form(variant: str) -> None:
    """CLTPreact's graph (create_graph=True) is the F.linear form's: first and second derivatives in every input and
    parameter, float64 and (with the activation inside the node, RELU-6) float32 against a float64 copy; a saturated
    rho has derivative 0 of both orders (C6)."""
    f32 = variant.startswith("f32")
    dt = torch.float32 if f32 else torch.float64
    layer = CLTLinear(6, 5, act="crelu" if variant.endswith("crelu") else "relu", dtype=dt,
                      bias=variant != "nobias", use_softplus=variant == "softplus", is_input="input" in variant)
    _posterior(layer, -1.0, seed=61)
    if variant == "saturated":
        assert layer.weight_rho is not None and layer.bias_rho is not None
        _saturate(layer.weight_rho, (0, slice(0, 2)), dt)
        _saturate(layer.bias_rho, slice(1, 3), dt)
    g = torch.Generator().manual_seed(62)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    vh = None if "input" in variant else torch.rand(4, 6, generator=g, dtype=torch.float64)
    ref = copy.deepcopy(layer).double()
    x_a, x_b = x.to(dt).requires_grad_(True), x.clone().requires_grad_(True)
    vh_a = None if vh is None else vh.to(dt).requires_grad_(True)
    vh_b = None if vh is None else vh.clone().requires_grad_(True)
    got = layer(x_a, vh_a)
    assert got[1] is not None
    first_a, second_a = _first_and_second((got[0], got[1]), _leaves(layer, x_a, vh_a), 63)
    first_b, second_b = _first_and_second(_clt_ref(ref, x_b, vh_b), _leaves(ref, x_b, vh_b), 63)
    rtol = _F32_RTOL if f32 else _F64_RTOL
    _assert_derivatives_close([t.double() for t in first_a], first_b, rtol)
    _assert_derivatives_close([t.double() for t in second_a], second_b, rtol)
    if variant == "saturated":
        i_w = next(i for i, p in enumerate(layer.parameters()) if p is layer.weight_rho)
        i_b = next(i for i, p in enumerate(layer.parameters()) if p is layer.bias_rho)
        again = layer(x_a, vh_a)
        assert again[1] is not None
        fast = _grads((again[0], again[1]), _leaves(layer, x_a, vh_a), 64)  # the hand-written backward
        for d in (fast, first_a, second_a):
            assert bool((d[i_w][0, :2] == 0).all()) and bool((d[i_b][1:3] == 0).all())


@pytest.mark.claim("C2", "C6")
@pytest.mark.parametrize("variant", ["plain", "nobias_zero_rows", "saturated", "3d"])
def test_lr_fused_node_second_order_is_the_plain_form(variant: str) -> None:
    """LRSample's graph is the F.linear + sqrt(clamp_min(v, tiny)) + addcmul form's, to second order (float64, the
    same noise); zero-variance rows and saturated rho included."""
    import torch.nn.functional as F

    dt = torch.float64
    layer = LRLinear(6, 4, bias=variant != "nobias_zero_rows", dtype=dt)
    _posterior(layer, -1.5, seed=71)
    if variant == "saturated":
        assert layer.weight_rho is not None and layer.bias_rho is not None
        _saturate(layer.weight_rho, (1, slice(0, 2)), dt)
        _saturate(layer.bias_rho, slice(0, 2), dt)
    g = torch.Generator().manual_seed(72)
    shape = (2, 3, 6) if variant == "3d" else (5, 6)
    x = torch.randn(shape, generator=g, dtype=dt)
    if variant == "nobias_zero_rows":
        x[0] = 0.0
    x.requires_grad_(True)
    eps = torch.randn((*shape[:-1], 4), generator=g, dtype=dt)
    _noise_from(layer, eps)
    wm, bm = layer.mean()
    assert layer.weight_rho is not None

    def ref() -> torch.Tensor:
        assert layer.weight_rho is not None
        wv = _std_ref(layer, layer.weight_rho).square()
        bv = _std_ref(layer, layer.bias_rho).square() if layer.bias_rho is not None else None
        v = F.linear(x.square(), wv, bv)
        return torch.addcmul(F.linear(x, wm, bm), torch.sqrt(v.clamp_min(torch.finfo(dt).tiny)), eps)

    leaves = _leaves(layer, x)
    first_a, second_a = _first_and_second((layer(x),), leaves, 73)
    first_b, second_b = _first_and_second((ref(),), leaves, 73)
    _assert_derivatives_close(first_a, first_b, _F64_RTOL)
    _assert_derivatives_close(second_a, second_b, _F64_RTOL)
    for d in (*first_a, *second_a):
        assert bool(torch.isfinite(d).all())
    if variant == "saturated":
        assert layer.bias_rho is not None
        i_w = next(i for i, p in enumerate(leaves) if p is layer.weight_rho)
        i_b = next(i for i, p in enumerate(leaves) if p is layer.bias_rho)
        for d2 in (first_a, second_a):
            assert bool((d2[i_w][1, :2] == 0).all()) and bool((d2[i_b][:2] == 0).all())


@pytest.mark.claim("C5", "C6")
@pytest.mark.parametrize("variant", ["bias", "nobias"])
def test_bbb_fused_node_second_order_is_the_plain_form(variant: str) -> None:
    """BBBSample's graph is F.linear(x, addcmul(mu, exp(clamp(rho)), eps), ...)'s to second order (float64, the same
    noise), and a saturated rho, weight or bias, has derivative 0 on the fast (first-order) backward and on the graph
    (C6)."""
    import torch.nn.functional as F

    dt = torch.float64
    layer = BBBLinear(5, 3, bias=variant == "bias", dtype=dt)
    _posterior(layer, -2.0, seed=81)
    assert layer.weight_rho is not None
    _saturate(layer.weight_rho, (0, slice(0, 2)), dt)
    if layer.bias_rho is not None:
        _saturate(layer.bias_rho, slice(1, 3), dt)
    g = torch.Generator().manual_seed(82)
    x = torch.randn(4, 5, generator=g, dtype=dt).requires_grad_(True)
    ew = torch.randn(3, 5, generator=g, dtype=dt)
    eb = torch.randn(3, generator=g, dtype=dt) if variant == "bias" else None
    _noise_from(layer, ew, eb)

    def ref() -> torch.Tensor:
        assert layer.weight_rho is not None
        w = torch.addcmul(layer.weight_mu, _std_ref(layer, layer.weight_rho), ew)
        b = None
        if layer.bias_mu is not None and layer.bias_rho is not None and eb is not None:
            b = torch.addcmul(layer.bias_mu, _std_ref(layer, layer.bias_rho), eb)
        return F.linear(x, w, b)

    leaves = _leaves(layer, x)
    fast = _grads((layer(x),), leaves, 83)
    first_a, second_a = _first_and_second((layer(x),), leaves, 84)
    first_b, second_b = _first_and_second((ref(),), leaves, 84)
    _assert_derivatives_close(first_a, first_b, _F64_RTOL)
    _assert_derivatives_close(second_a, second_b, _F64_RTOL)
    i_w = next(i for i, p in enumerate(leaves) if p is layer.weight_rho)
    for d in (fast, first_a, second_a):
        assert d[i_w] is not None and bool((d[i_w][0, :2] == 0).all())
        if layer.bias_rho is not None:
            i_b = next(i for i, p in enumerate(leaves) if p is layer.bias_rho)
            assert d[i_b] is not None and bool((d[i_b][1:3] == 0).all())


@pytest.mark.claim("C6")
@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_sqrt_at_the_fused_size_is_the_clamped_sqrt(dtype: torch.dtype) -> None:
    """At >= FUSE_MIN elements safe_sqrt runs the _SafeSqrt node: its values and gradient are sqrt(clamp_min(v,
    tiny))'s bit for bit (0 below tiny, C6), its graph gives the same second derivative, and under torch.func (where
    no custom autograd.Function may run) it still gives that gradient."""
    from rln_verified._bayesian_std import FUSE_MIN, safe_sqrt

    tiny = torch.finfo(dtype).tiny
    g = torch.Generator().manual_seed(91)
    v0 = torch.rand(FUSE_MIN, generator=g, dtype=torch.float64).to(dtype) + 0.5
    v0[:5] = torch.tensor([0.0, tiny / 4, tiny, 2 * tiny, 1e-30], dtype=dtype)
    u = torch.randn(FUSE_MIN, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(FUSE_MIN, generator=g, dtype=torch.float64).to(dtype)

    def ref(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(t.clamp_min(tiny))

    v = v0.clone().requires_grad_(True)
    got, want = safe_sqrt(v), ref(v)
    assert torch.equal(got, want)
    (ga,) = torch.autograd.grad(got, v, u)
    (gb,) = torch.autograd.grad(want, v, u)
    assert torch.equal(ga, gb) and bool((ga[:2] == 0).all())
    (fa,) = torch.autograd.grad(safe_sqrt(v), v, u, create_graph=True)
    (fb,) = torch.autograd.grad(ref(v), v, u, create_graph=True)
    (ha,) = torch.autograd.grad((fa * w).sum(), v)
    (hb,) = torch.autograd.grad((fb * w).sum(), v)
    assert torch.equal(fa, fb) and torch.equal(ha, hb)
    gf = torch.func.grad(lambda t: (safe_sqrt(t) * u).sum())(v0)
    assert torch.equal(gf, gb)


# ---- dispatch: any leading shape, softplus, torch.func and autocast give the reference form's values ----------


def _layer_with_noise(cls: type[BayesianLinear], shape: tuple[int, ...], dt: torch.dtype, seed: int,
                      **kw: object) -> BayesianLinear:
    layer = cls(5, 3, dtype=dt, **kw)  # type: ignore[arg-type]
    _posterior(layer, -2.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    if cls is LRLinear:
        _noise_from(layer, torch.randn((*shape[:-1], 3), generator=g, dtype=torch.float64).to(dt))
    else:
        _noise_from(layer, torch.randn(3, 5, generator=g, dtype=torch.float64).to(dt),
                    torch.randn(3, generator=g, dtype=torch.float64).to(dt))
    return layer


def _sample_ref(layer: BayesianLinear, x: torch.Tensor) -> torch.Tensor:
    """The BBB / LR sample written with F.linear, std() and the layer's stored noise (any leading shape)."""
    import torch.nn.functional as F

    wm, bm = layer.mean()
    ws, bs = layer.std()
    assert bm is not None and bs is not None and layer._random_weight is not None
    if isinstance(layer, LRLinear):
        v = F.linear(x.square(), ws.square(), bs.square())
        return torch.addcmul(F.linear(x, wm, bm), torch.sqrt(v.clamp_min(torch.finfo(v.dtype).tiny)),
                             layer._random_weight)
    assert layer._random_bias is not None
    return F.linear(x, torch.addcmul(wm, ws, layer._random_weight), torch.addcmul(bm, bs, layer._random_bias))


@pytest.mark.claim("C2", "C5")
@pytest.mark.parametrize("cls", [BBBLinear, LRLinear])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (4, 5)])
@pytest.mark.parametrize("use_softplus", [False, True])
def test_sampling_layers_take_any_leading_shape(cls: type[BayesianLinear], shape: tuple[int, ...],
                                                use_softplus: bool) -> None:
    """A 1-D, 2-D or 3-D input gives the F.linear form's sample (same noise) with shape (*lead, out), bit for bit
    (float64), with exp or softplus std."""
    layer = _layer_with_noise(cls, shape, torch.float64, 101, use_softplus=use_softplus)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(102), dtype=torch.float64)
    got = layer(x)
    assert got.shape == (*shape[:-1], 3)
    assert torch.equal(got, _sample_ref(layer, x))


@pytest.mark.claim("C3")
@pytest.mark.parametrize("shape", [(6,), (2, 3, 6)])
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_takes_any_leading_shape(shape: tuple[int, ...], act: str) -> None:
    """CLTLinear on a 1-D or 3-D input: the moments of each row are those of the same row in a 2-D batch (float32,
    the fused activation; float64, the autograd one), shape (*lead, out or 2 out); MAP mode too."""
    for dt in DTYPES:
        layer = CLTLinear(6, 4, act=act, dtype=dt)  # type: ignore[arg-type]
        _posterior(layer, -1.0, seed=111)
        g = torch.Generator().manual_seed(112)
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dt)
        vh = torch.rand(shape, generator=g, dtype=torch.float64).to(dt)
        width = 4 * (2 if act == "crelu" else 1)
        for mode in (False, True):
            layer.map(mode)
            m, v = layer(x, None if mode else vh)
            m2, v2 = layer(x.reshape(-1, 6), None if mode else vh.reshape(-1, 6))
            assert m.shape == (*shape[:-1], width)
            assert torch.equal(m, m2.reshape(m.shape))
            if mode:
                assert v is None and v2 is None
            else:
                assert v is not None and v2 is not None and torch.equal(v, v2.reshape(v.shape))
        first = CLTLinear(6, 4, act=act, is_input=True, dtype=dt)  # type: ignore[arg-type]
        m, v = first(x)
        m2, v2 = first(x.reshape(-1, 6))
        assert v is not None and v2 is not None and m.shape == (*shape[:-1], width)
        assert torch.equal(m, m2.reshape(m.shape)) and torch.equal(v, v2.reshape(v.shape))


@pytest.mark.claim("C2", "C3", "C5")
@pytest.mark.parametrize("cls", [BBBLinear, LRLinear, CLTLinear])
def test_func_transforms_run_the_autograd_form(cls: type[BayesianLinear]) -> None:
    """Under torch.func (jacrev in the input) a layer gives the eager layer's Jacobian (float64, the same stored
    noise): the fused nodes, which torch.func cannot run, are not taken."""
    g = torch.Generator().manual_seed(121)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    if cls is CLTLinear:
        layer: BayesianLinear = CLTLinear(5, 3, is_input=True, dtype=torch.float64)
        _posterior(layer, -1.0, seed=122)
    else:
        layer = _layer_with_noise(cls, (4, 5), torch.float64, 122)

    def f(t: torch.Tensor) -> torch.Tensor:
        out = layer(t)
        return torch.cat([out[0], out[1]], dim=-1) if isinstance(out, tuple) else out

    jac = torch.func.jacrev(f)(x)
    want = torch.autograd.functional.jacobian(f, x)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(jac, want, rtol=_F64_RTOL, atol=0.0)


@pytest.mark.claim("C2", "C3", "C5")
@pytest.mark.parametrize("cls", [BBBLinear, LRLinear, CLTLinear, CLTLinearDet])
@pytest.mark.parametrize("dt", DTYPES)
def test_autocast_computes_in_the_layer_dtype_and_returns_the_autocast_dtype(cls: type[BayesianLinear],
                                                                          dt: torch.dtype) -> None:
    """Under CPU autocast (bfloat16) a layer computes in float32 (or its float64 parameters' dtype) with autocast off
    and returns bfloat16: the result is the layer's own output outside autocast, cast to bfloat16, bit for bit. A CLT
    layer takes the previous layer's bfloat16 (mean, var) and upcasts both."""
    g = torch.Generator().manual_seed(131)
    if cls in (CLTLinear, CLTLinearDet):
        layer: BayesianLinear = cls(5, 3, dtype=dt)
        _posterior(layer, -1.0, seed=132)
        m16 = torch.randn(4, 5, generator=g).to(torch.bfloat16)
        v16 = torch.rand(4, 5, generator=g).to(torch.bfloat16)
        m, v = layer(m16.to(dt), v16.to(dt))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ma, va = layer(m16, v16)
        assert v is not None and va is not None and ma.dtype == va.dtype == torch.bfloat16
        assert torch.equal(ma, m.to(torch.bfloat16)) and torch.equal(va, v.to(torch.bfloat16))
        layer.map()  # MAP mode: (mean, None), the None passed through
        mm = layer(m16.to(dt))[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mma, vma = layer(m16)
        assert vma is None and torch.equal(mma, mm.to(torch.bfloat16))
        first = cls(5, 3, is_input=True, dtype=dt)  # var_h None: nothing to upcast
        mi, vi = first(m16.to(dt))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mia, via = first(m16)
        assert torch.equal(mia, mi.to(torch.bfloat16))
        if cls is CLTLinearDet:  # deterministic weights and input: no variance
            assert vi is None and via is None
            return
        assert vi is not None and via is not None and torch.equal(via, vi.to(torch.bfloat16))
        return
    layer = _layer_with_noise(cls, (4, 5), dt, 133)
    x = torch.randn(4, 5, generator=g).to(torch.bfloat16)
    y = layer(x.to(dt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = layer(x)
    assert ya.dtype == torch.bfloat16 and torch.equal(ya, y.to(torch.bfloat16))


# ---- state and messages: the contracts a user sees ----------------------------------------------------------------


def test_update_prior_has_the_constructor_contract() -> None:
    """update_prior takes the constructor's forms with its defaults (None: N(0, 1)) and messages, in full; a number
    prior is state that reset_parameters restores (buffers hold garbage after to_empty), a tensor prior is kept."""
    layer = BBBLinear(4, 3)

    def scramble_and_reset() -> None:
        with torch.no_grad():
            layer.prior_mean.fill_(math.nan)
            layer.prior_std.fill_(math.nan)
        layer.reset_parameters()

    layer.update_prior(0.5, 2)
    assert layer.prior_mean.tolist() == [0.5] and layer.prior_std.tolist() == [2.0]
    scramble_and_reset()
    assert layer.prior_mean.tolist() == [0.5] and layer.prior_std.tolist() == [2.0]
    layer.update_prior(None, None)
    assert layer.prior_mean.tolist() == [0.0] and layer.prior_std.tolist() == [1.0]
    scramble_and_reset()
    assert layer.prior_mean.tolist() == [0.0] and layer.prior_std.tolist() == [1.0]
    pm, ps = torch.full((3, 4), 0.25), torch.full((3, 4), 3.0)
    layer.update_prior(pm, ps)
    layer.reset_parameters()
    assert torch.equal(layer.prior_mean, pm) and torch.equal(layer.prior_std, ps)
    bad: list[tuple[tuple[object, object], str]] = [
        ((math.inf, 1.0), "prior_mean must be finite, got inf"),
        ((0.0, math.inf), "prior_std must be finite, got inf"),
        (("0", 1.0), "prior_mean must be an int, a float or a tensor, got str"),
        ((0.0, "1"), "prior_std must be an int, a float or a tensor, got str"),
        ((0.0, -1.0), "prior_std must be > 0 and finite everywhere, got -1.0"),
        ((torch.zeros(4, 3), 1.0),
         "prior_mean must be a scalar, a one-element tensor or weight-shaped (3, 4), got shape (4, 3)"),
        ((0.0, torch.ones(2)),
         "prior_std must be a scalar, a one-element tensor or weight-shaped (3, 4), got shape (2,)"),
        ((torch.zeros(1, dtype=torch.complex64), 1.0), "prior_mean must be a real tensor, got dtype torch.complex64"),
        ((0.0, torch.ones(1, dtype=torch.complex64)), "prior_std must be a real tensor, got dtype torch.complex64"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError) as info:
            layer.update_prior(*args)  # type: ignore[arg-type]
        assert str(info.value) == message
    assert torch.equal(layer.prior_mean, pm) and torch.equal(layer.prior_std, ps)  # a refused update changes nothing


@pytest.mark.claim("C5")
def test_manual_reset_switches() -> None:
    """set_manual_reset() turns it on (default True); turning it on again keeps the stored noise (only
    reset_randomness forgets it); off then on draws fresh noise; reset_randomness without it raises, in full. The
    MLP's switches reach every layer (set_manual_reset() and map() default to on)."""
    torch.manual_seed(0)
    layer = BBBLinear(5, 3)
    layer.set_manual_reset()
    assert layer.get_manual_reset()
    x = torch.randn(2, 5)
    y1 = layer(x)
    layer.set_manual_reset(True)
    assert torch.equal(layer(x), y1)
    layer.set_manual_reset(False)
    assert not layer.get_manual_reset()
    layer.set_manual_reset(True)
    y2 = layer(x)
    assert not torch.equal(y2, y1) and torch.equal(layer(x), y2)
    layer.set_manual_reset(False)
    with pytest.raises(ValueError) as info:
        layer.reset_randomness()
    assert str(info.value) == "BBBLinear.reset_randomness needs manual_reset=True; call set_manual_reset() first"
    net = BayesianMLP(5, 3, depth=2, width=4, layer_type="bbb")
    net.set_manual_reset()
    assert all(lay.get_manual_reset() for lay in net.bayesian_layers())
    assert torch.equal(net(x), net(x))
    net.set_manual_reset(False)
    assert not any(lay.get_manual_reset() for lay in net.bayesian_layers())
    net.map()
    assert all(lay._map for lay in net.bayesian_layers())


@pytest.mark.claim("C5")
def test_noise_follows_the_layer_dtype_and_device() -> None:
    """The noise is drawn in the layer's dtype and on its device, not torch's defaults: a float32 layer under a float64
    default dtype returns float32 and stores float32 noise; a meta layer runs on meta."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for cls in (BBBLinear, LRLinear):
            for soft in (False, True):
                layer = cls(5, 3, manual_reset=True, use_softplus=soft, dtype=torch.float32)
                y = layer(torch.randn(2, 5, dtype=torch.float32))
                assert y.dtype == torch.float32 and layer._random_weight is not None
                assert layer._random_weight.dtype == torch.float32
    finally:
        torch.set_default_dtype(old)
    for cls in (BBBLinear, LRLinear):
        meta = cls(5, 3, device="meta")
        out = meta(torch.empty(2, 5, device="meta"))
        assert out.is_meta and out.shape == (2, 3)


class _NoStdBBB(BBBLinear):
    """A subclass without learned std (the documented _learn_std switch), to reach std()/var()'s refusal."""

    _learn_std: ClassVar[bool] = False


def test_messages_in_full() -> None:
    """The errors users see, compared in full (a wrapped or dropped part of a message fails)."""
    cases: list[tuple[type[Exception], Callable[[], object], str]] = [
        (ValueError, lambda: _NoStdBBB(3, 2).std(), "_NoStdBBB has no learned standard deviation (weight_rho is None)"),
        (ValueError, lambda: _NoStdBBB(3, 2).var(), "_NoStdBBB has no learned standard deviation (weight_rho is None)"),
        (ValueError, lambda: CLTLinearDet(3, 2).var(),
         "CLTLinearDet has no learned standard deviation, so no variance"),
        (ValueError, lambda: CLTLinearDet(3, 2).KL(), "CLTLinearDet has deterministic weights, so no KL divergence"),
        (NotImplementedError, lambda: BayesianLinear(3, 2)(torch.randn(1, 3)),
         "BayesianLinear: BayesianLinear is a base class; use BBBLinear, LRLinear, CLTLinear or CLTLinearDet"),
        (ValueError, lambda: CLTLinear(3, 2)(torch.randn(1, 3)),
         "CLTLinear: var_h is required for a non-input layer outside MAP mode (set is_input=True for a deterministic "
         "input)"),
        (ValueError, lambda: CLTLinear(3, 2, act="tanh"),  # type: ignore[arg-type]
         "act must be 'relu' or 'crelu', got 'tanh'"),
        (ValueError, lambda: BBBLinear(0, 2), "in_features must be a positive int, got 0"),
        (ValueError, lambda: BBBLinear(3, True), "out_features must be a positive int, got True"),
        (ValueError, lambda: BBBLinear(3, 2, dtype=torch.int32),
         "dtype must be a floating-point dtype, got torch.int32"),
        (ValueError, lambda: BBBLinear(3, 2, prior_mean=torch.tensor([[0.0, math.nan, 0.0], [0.0, 0.0, 0.0]])),
         "prior_mean must be finite"),
        (ValueError, lambda: BBBLinear(3, 2, prior_std=torch.tensor([[1.0, 2.0, 0.5], [1.0, -3.0, 1.0]])),
         "prior_std must be > 0 and finite everywhere, got min -3.0"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 4, layer_type="mlp"),  # type: ignore[arg-type]
         "layer_type must be one of ['bbb', 'clt', 'cltdet', 'lr'], got 'mlp'"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 4, act="gelu"),  # type: ignore[arg-type]
         "act must be 'relu' or 'crelu', got 'gelu'"),
        (ValueError, lambda: BayesianMLP(3, 2, 0, 4), "depth must be a positive int, got 0"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 2.0), "width must be a positive int, got 2.0"),  # type: ignore[arg-type]
        (ValueError, lambda: BayesianMLP(0, 2, 2, 4), "dim_in must be a positive int, got 0"),
        (ValueError, lambda: BayesianMLP(3, -1, 2, 4), "dim_out must be a positive int, got -1"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 4, layer_type="clt", has_norm=True),
         "has_norm is not available for CLT layers: a normalization of a random vector has no closed-form moments to "
         "propagate; use layer_type 'bbb' or 'lr'"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 1, layer_type="lr", has_norm=True),
         "has_norm needs width >= 2 (R-LayerNorm's window), got 1"),
        (ValueError, lambda: BayesianMLP(3, 2, 2, 4, layer_type="lr")(torch.randn(1, 3), torch.rand(1, 3)),
         "an input variance is only used by CLT layers, not by layer_type 'lr'"),
    ]
    det = CLTLinearDet(3, 2)
    det.map()
    cases.append((ValueError, lambda: det(torch.randn(1, 3), torch.rand(1, 3)),
                  "CLTLinearDet: var_h must be None in MAP mode (the MAP forward is deterministic), got a tensor"))
    lr = LRLinear(3, 2, manual_reset=True)
    lr(torch.randn(2, 3))
    cases.append((ValueError, lambda: lr(torch.randn(4, 3)),
                  "LRLinear: manual_reset keeps noise of shape (2, 2), but this call needs (4, 2); call "
                  "reset_randomness() before changing the batch shape"))
    for exc, call, message in cases:
        with pytest.raises(exc) as info:
            call()
        assert str(info.value) == message


def test_crelu_doubles_the_last_dimension() -> None:
    """CReLU and a CLT layer's MAP CReLU concatenate along the last dimension, for any number of dimensions."""
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(CReLU()(x), torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=-1), rtol=0, atol=0)
    layer = CLTLinear(4, 5, act="crelu")
    layer.map()
    m, v = layer(x)
    pre = x @ layer.weight_mu.detach().T + layer.bias_mu.detach()  # type: ignore[union-attr]
    assert v is None and m.shape == (2, 3, 10)
    torch.testing.assert_close(m, torch.cat([pre.clamp_min(0), (-pre).clamp_min(0)], dim=-1))


@pytest.mark.parametrize("cls", [BBBLinear, CLTLinear])
@pytest.mark.parametrize("bias", [False, True])
def test_repr_names_the_construction_arguments(cls: type[BayesianLinear], bias: bool) -> None:
    layer = cls(3, 2, bias=bias, use_softplus=True, manual_reset=True)
    want = f"in_features=3, out_features=2, bias={bias}, use_softplus=True, manual_reset=True"
    if cls is CLTLinear:
        want += ", act='relu', is_input=False, is_output=False"
    assert layer.extra_repr() == want


@pytest.mark.parametrize("cls", [BBBLinear, LRLinear, CLTLinear])
@pytest.mark.parametrize("shape", [(6,), (2, 6), (2, 3, 6)])
def test_wrong_input_size_raises_the_linear_error(cls: type[BayesianLinear], shape: tuple[int, ...]) -> None:
    """An input whose last dimension is not in_features raises F.linear's own error (as nn.Linear does), whatever the
    number of dimensions."""
    import torch.nn.functional as F

    layer = CLTLinear(5, 3, is_input=True) if cls is CLTLinear else cls(5, 3)
    x = torch.randn(shape)
    with pytest.raises(RuntimeError) as want:
        F.linear(x, layer.weight_mu, layer.bias_mu)
    with pytest.raises(RuntimeError) as got:
        layer(x)
    assert str(got.value) == str(want.value)


@pytest.mark.claim("C3")
def test_clt_broadcast_input_variance() -> None:
    """A variance that broadcasts against the mean (one row for the batch) gives the moments of the expanded variance
    (float64): the same F.linear sums up to the order of the variance's two sums, so within 8 u relative as in
    test_clt_fused_node_matches_autograd_form."""
    dt = torch.float64
    layer = CLTLinear(6, 4, dtype=dt)
    _posterior(layer, -1.0, seed=141)
    g = torch.Generator().manual_seed(142)
    x = torch.randn(5, 6, generator=g, dtype=dt)
    vh = torch.rand(1, 6, generator=g, dtype=dt)
    m, v = layer(x, vh)
    m2, v2 = layer(x, vh.expand(5, 6).clone())
    assert v is not None and v2 is not None and m.shape == m2.shape and v.shape == v2.shape
    torch.testing.assert_close(m, m2, rtol=8 * 2.0**-53, atol=0.0)
    torch.testing.assert_close(v, v2, rtol=8 * 2.0**-53, atol=0.0)


def _node(t: torch.Tensor) -> str:
    """The autograd node that made ``t``, looking through reshapes."""
    fn = t.grad_fn
    while fn is not None and type(fn).__name__.startswith(("ViewBackward", "UnsafeViewBackward", "ReshapeAlias")):
        fn = fn.next_functions[0][0]
    return type(fn).__name__


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
def test_each_layer_sample_is_one_autograd_node(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """The module's speed design: in plain eager mode on CPU, with exp std, a BBB or LR sample and a CLT
    layer's moments are one autograd node with a hand-written backward (BBBSample, LRSample, CLTPreact), for any
    number of leading dimensions; a softplus std takes the F.linear form."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    assert _node(BBBLinear(5, 3, dtype=dtype)(x)) == "BBBSampleBackward"
    assert _node(LRLinear(5, 3, dtype=dtype)(x)) == "LRSampleBackward"
    m, v = CLTLinear(5, 3, is_output=True, dtype=dtype)(x, x.detach().abs())
    assert v is not None and _node(m) == _node(v) == "CLTPreactBackward"
    if dtype == torch.float32:  # the activation joins the node where the fused kernel applies (RELU-6)
        from rln_verified._native import gauss

        if gauss.available():
            m, v = CLTLinear(5, 3, dtype=dtype)(x, x.detach().abs())
            assert v is not None and _node(m) == "CLTPreactBackward"
    assert _node(BBBLinear(5, 3, use_softplus=True, dtype=dtype)(x)) != "BBBSampleBackward"
    assert _node(LRLinear(5, 3, use_softplus=True, dtype=dtype)(x)) != "LRSampleBackward"


@pytest.mark.claim("C4")
@pytest.mark.parametrize("cls", [BBBLinear, LRLinear])
def test_map_mode_is_f_linear_of_the_means(cls: type[BayesianLinear]) -> None:
    """MAP mode: the sampling layers return F.linear(x, weight_mu, bias_mu) bit for bit, with and without bias."""
    import torch.nn.functional as F

    x = torch.randn(4, 5, dtype=torch.float64)
    for bias in (True, False):
        layer = cls(5, 3, bias=bias, dtype=torch.float64)
        layer.map()
        assert torch.equal(layer(x), F.linear(x, layer.weight_mu, layer.bias_mu))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype: torch.dtype) -> None:
    """A batch of zero rows gives zero rows of output (as nn.Linear), forward and backward, on every layer."""
    x = torch.zeros(0, 5, dtype=dtype, requires_grad=True)
    for layer in (BBBLinear(5, 3, dtype=dtype), LRLinear(5, 3, dtype=dtype), LRLinear(5, 3, bias=False, dtype=dtype)):
        y = layer(x)
        assert y.shape == (0, 3)
        y.sum().backward()
    for act in ("relu", "crelu"):
        m, v = CLTLinear(5, 3, act=act, is_input=True, dtype=dtype)(x)  # type: ignore[arg-type]
        assert v is not None and m.shape == v.shape == (0, 3 * (2 if act == "crelu" else 1))
        (m.sum() + v.sum()).backward()


@pytest.mark.claim("EXP-1", "C3")
def test_clt_variance_uses_the_std_kernels_exp() -> None:
    """float32 on CPU the std's exp is one kernel's (EXP-1) everywhere: with an input variance (the node then also
    forms mu_W^2 in the same pass), one-hot means and zero variances the CLT variance is sigma_W^2 itself, exactly
    (each sum has one nonzero term), and equals var() bit for bit."""
    layer = CLTLinear(64, 70, bias=False, is_output=True)
    _posterior(layer, -3.0, seed=151)
    x = torch.eye(64)
    _, v = layer(x, torch.zeros(64, 64))
    assert v is not None
    wv, _ = layer.var()
    assert torch.equal(v, wv.detach().T)


def _relu_moments_closed(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RELU-1's mean and variance of max(0, N(m, s^2)) in float64 through math.erfc, elementwise: t = m/s,
    mean = m Phi(t) + s phi(t), E[y^2] = (m^2 + s^2) Phi(t) + m s phi(t), var = E[y^2] - mean^2."""
    mean, var = torch.empty_like(m), torch.empty_like(m)
    for i, (mi, si) in enumerate(zip(m.flatten().tolist(), s.flatten().tolist(), strict=True)):
        t = mi / si
        cdf, pdf = 0.5 * math.erfc(-t / math.sqrt(2.0)), math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
        mu = mi * cdf + si * pdf
        mean.view(-1)[i] = mu
        var.view(-1)[i] = (mi * mi + si * si) * cdf + mi * si * pdf - mu * mu
    return mean, var


def test_plain_forms_match_closed_forms() -> None:
    """The plain forms that the recomputed VJPs differentiate and torch.func runs (C3, C5, C6, RELU-1) against
    closed forms written here in float64: a sampled weight, the local-reparameterization variance, the CLT moments
    with and without an input variance, with no activation, ReLU and CReLU, and the deterministic variant's
    variance parameterization. rho straddles [lo, hi] so the clamp acts at both ends.

    Tolerance: every form is a few float64 roundings of a well-conditioned expression, except the closed ReLU
    moments, which cancel. At t = m/s <= -3 the sum in E[y^2] cancels to 2 s^2 phi(t)/|t|^3 out of terms of size
    s^2 phi(t) |t| (a loss of t^4/2 = 41, under 2 digits) and the mean to s phi(t)/t^2 (a loss of t^2 = 9); at
    t >= 3 var = E[y^2] - mean^2 loses E[y^2]/var <= t^2 + 1 = 10. With |t| <= 3 (asserted) the closed form is
    within 100 * 2^-52 = 2.2e-14 relative, and F.linear's 4-term sums add a few ulps: 1e-12 leaves room and is far
    below the effect of any wrong term at these inputs."""
    from rln_verified import _bayesian_ops as ops
    from rln_verified import _bayesian_std as bstd

    g = torch.Generator().manual_seed(3)
    d = torch.float64
    lo, hi = -1.5, 0.5
    x = torch.randn(3, 4, generator=g, dtype=d)
    wm, bm = torch.randn(5, 4, generator=g, dtype=d) * 0.5, torch.randn(5, generator=g, dtype=d) * 0.5
    rho_w = torch.linspace(-3.0, 2.0, 20, dtype=d).reshape(5, 4)
    rho_b = torch.tensor([-4.0, -1.0, 0.0, 0.4, 1.5], dtype=d)  # below lo, inside, above hi
    eps_w, eps_b = torch.randn(5, 4, generator=g, dtype=d), torch.randn(5, generator=g, dtype=d)
    sd_w, sd_b = torch.exp(rho_w.clamp(lo, hi)), torch.exp(rho_b.clamp(lo, hi))
    close = {"rtol": 1e-12, "atol": 0.0}

    torch.testing.assert_close(bstd.std_plain(rho_w, lo, hi, False), sd_w, **close)
    torch.testing.assert_close(bstd.std_plain(rho_b, lo, hi, True), sd_b * sd_b, **close)
    assert bstd.std_plain(None, lo, hi, True) is None

    tiny = torch.finfo(d).tiny
    v = torch.tensor([-1.0, 0.0, tiny / 2, tiny, 4.0], dtype=d)
    want = torch.tensor([math.sqrt(tiny)] * 4 + [2.0], dtype=d)
    torch.testing.assert_close(bstd.safe_sqrt_plain(v)[0], want, **close)

    (y,) = ops._bbb_plain(x, wm, rho_w, eps_w, bm, rho_b, eps_b, lo, hi)
    torch.testing.assert_close(y, x @ (wm + sd_w * eps_w).T + (bm + sd_b * eps_b), **close)
    (y,) = ops._bbb_plain(x, wm, rho_w, eps_w, None, None, None, lo, hi)
    torch.testing.assert_close(y, x @ (wm + sd_w * eps_w).T, **close)

    eps = torch.randn(3, 5, generator=g, dtype=d)
    m = x @ wm.T + bm
    var = (x * x) @ (sd_w * sd_w).T + sd_b * sd_b
    (y,) = ops._lr_plain(x, wm, bm, rho_w, rho_b, eps, lo, hi)
    torch.testing.assert_close(y, m + var.sqrt() * eps, **close)
    (y,) = ops._lr_plain(x, wm, None, rho_w, None, eps, lo, hi)
    torch.testing.assert_close(y, x @ wm.T + ((x * x) @ (sd_w * sd_w).T).sqrt() * eps, **close)

    mu_h, var_h = x, torch.rand(3, 4, generator=g, dtype=d) + 0.1
    m_no = mu_h @ wm.T + bm
    v_no = (mu_h * mu_h) @ (sd_w * sd_w).T + sd_b * sd_b
    v_in = (var_h + mu_h * mu_h) @ (sd_w * sd_w).T + sd_b * sd_b + var_h @ (wm * wm).T
    for vh, want_v in ((None, v_no), (var_h, v_in)):
        assert bool(((m_no / want_v.sqrt()).abs() <= 3.0).all())  # the tolerance's premise
        mean, vv = ops._clt_plain(mu_h, vh, wm, bm, rho_w, rho_b, (lo, hi), None)
        torch.testing.assert_close(mean, m_no, **close)
        torch.testing.assert_close(vv, want_v, **close)
        rm, rv = _relu_moments_closed(m_no, want_v.sqrt())
        mean, vv = ops._clt_plain(mu_h, vh, wm, bm, rho_w, rho_b, (lo, hi), "relu")
        torch.testing.assert_close(mean, rm, **close)
        torch.testing.assert_close(vv, rv, **close)
        nm, nv = _relu_moments_closed(-m_no, want_v.sqrt())
        mean, vv = ops._clt_plain(mu_h, vh, wm, bm, rho_w, rho_b, (lo, hi), "crelu")
        torch.testing.assert_close(mean, torch.cat([rm, nm], -1), **close)
        torch.testing.assert_close(vv, torch.cat([rv, nv], -1), **close)
    # rho_bounds None: the variances are given directly (CLTLinearDet's parameterization)
    mean, vv = ops._clt_plain(mu_h, None, wm, bm, sd_w * sd_w, sd_b * sd_b, None, None)
    torch.testing.assert_close(vv, v_no, **close)
    mean, vv = ops._clt_plain(mu_h, None, wm, None, sd_w * sd_w, None, None, None)
    torch.testing.assert_close(mean, mu_h @ wm.T, **close)
    torch.testing.assert_close(vv, (mu_h * mu_h) @ (sd_w * sd_w).T, **close)


def test_fused_safe_sqrt_values_and_gradient() -> None:
    """_SafeSqrt (the fused sqrt, used at >= 4096 elements): sqrt above tiny, sqrt(tiny) at and below it, and the
    gradient 1/(2 sqrt(v)) above tiny and 0 below it (C6), exactly as the plain clamp form; with nothing below
    tiny it skips the clamp and still matches."""
    from rln_verified import _bayesian_std as bstd

    for d in (torch.float32, torch.float64):
        tiny = torch.finfo(d).tiny
        v = torch.rand(4096, dtype=d, generator=torch.Generator().manual_seed(1)) + 0.5
        for low in (False, True):
            vin = v.clone()
            if low:
                vin[:4] = torch.tensor([-1.0, 0.0, tiny / 2, tiny], dtype=d)
            a = vin.clone().requires_grad_(True)
            b = vin.clone().requires_grad_(True)
            out = bstd._SafeSqrt.apply(a)
            ref = torch.sqrt(b.clamp_min(tiny))
            assert torch.equal(out, ref)
            w = torch.randn(4096, dtype=d, generator=torch.Generator().manual_seed(2))
            (ga,) = torch.autograd.grad(out, a, w)
            (gb,) = torch.autograd.grad(ref, b, w)
            assert torch.equal(ga, gb)
            if low:
                assert bool((ga[:3] == 0).all()) and bool(ga[3] != 0)


def test_extra_repr_names_every_setting() -> None:
    """The repr shows the sizes, the bias, the std parameterization and manual_reset as they are."""
    layer = LRLinear(5, 3, bias=False, use_softplus=True)
    layer.set_manual_reset(True)
    assert layer.extra_repr() == "in_features=5, out_features=3, bias=False, use_softplus=True, manual_reset=True"
    layer = BBBLinear(2, 7)
    assert layer.extra_repr() == "in_features=2, out_features=7, bias=True, use_softplus=False, manual_reset=False"


class _WithKL(nn.Module):
    """A layer's output, its KL (C1) and its weight variance (var()), as one module for torch.func.functional_call."""

    def __init__(self, layer: BayesianLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args: torch.Tensor) -> tuple[object, torch.Tensor, torch.Tensor]:
        out = self.layer(*args)
        if self.layer.weight_rho is None:
            zero = args[0].new_zeros(())
            return out, zero, args[0].new_zeros(4, 1)
        return out, self.layer.KL()[0], self.layer.var()[0]


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("cls", [BBBLinear, LRLinear, CLTLinear, CLTLinearDet])
def test_second_order_through_the_fused_functions_matches_torch_func(cls: type[BayesianLinear],
                                                                     softplus: bool) -> None:
    """A Hessian-vector product in the parameters and the input, through the custom autograd Functions that run at
    >= 4096 weights (create_graph: each backward differentiates its plain form), against the same product under
    torch.func, which runs the plain forms themselves (checked against closed forms above). The loss adds the KL
    and var(), which reach the fused std (ExpStd). Both in float64 on one layer with its noise drawn once, with
    exp and softplus (rho's second derivative differs). A few rho sit below the std bound: their first and second
    derivatives are exactly 0 (C6).

    Tolerance: the two sides evaluate the same expressions in a different order; each entry is a sum of at most
    ~4 n_in = 256 products per pass over 3 passes, so |diff| <= 3 * 256 * 2^-53 * (sum of magnitudes) ~ 1e-13 of
    the scale below; 1e-10 leaves room and is far below an error in any term."""
    torch.manual_seed(0)
    kw: dict[str, object] = {"dtype": torch.float64}
    if issubclass(cls, CLTLinear):
        kw["is_input"] = False
    else:
        kw["manual_reset"] = True
    layer = cls(64, 80, use_softplus=softplus, **kw)  # type: ignore[arg-type]
    saturated = {"layer.weight_rho": (0, slice(0, 8)), "layer.bias_rho": (slice(0, 2),)}
    with torch.no_grad():  # below the lower std bound: std clamped, gradient exactly 0 there (C6)
        for name, where in saturated.items():
            rho = getattr(layer, name.removeprefix("layer."))
            if rho is not None:  # CLTLinearDet has no rho
                rho[where] = -200.0
    x = torch.randn(4, 64, dtype=torch.float64)
    v_in = torch.rand(4, 64, dtype=torch.float64) if issubclass(cls, CLTLinear) else None
    layer(x) if v_in is None else layer(x, v_in)  # draws the noise once (manual_reset)
    whole = _WithKL(layer)
    names = [n for n, _ in whole.named_parameters()]
    params = tuple(p.detach() for p in whole.parameters())
    c = torch.randn(4, 160 if cls is CLTLinear else 80, dtype=torch.float64)
    dirs = tuple(torch.randn_like(p) for p in (x, *params))

    def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, ps, strict=True))
        args = (xx,) if v_in is None else (xx, v_in)
        out, kl, var_w = torch.func.functional_call(whole, state, args)
        extra = kl + (c[:, :1] * var_w[:4]).sum()
        if isinstance(out, tuple):
            m, v = out
            return (c[:, : m.shape[-1]] * m).sum() + 0.5 * (c[:, : v.shape[-1]] * v).sum() + extra
        return (c[:, : out.shape[-1]] * out).sum() + extra

    leaves = tuple(t.clone().requires_grad_() for t in (x, *params))
    first = torch.autograd.grad(loss(*leaves), leaves)  # the hand-written (fused) backward
    grads = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)
    hv = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)), leaves,
                             allow_unused=True, materialize_grads=True)  # a linear term's is 0
    g_ref, ref = torch.func.jvp(torch.func.grad(loss, argnums=tuple(range(len(leaves)))), (x, *params), dirs)
    for got, want in zip((*first, *grads, *hv), (*g_ref, *g_ref, *ref), strict=True):
        scale = float(want.abs().max()) + 1.0
        assert float((got - want).abs().max()) <= 1e-10 * scale, (cls.__name__, softplus)
    for i, name in enumerate(names):
        if name in saturated:
            where = saturated[name]
            assert bool((first[i + 1][where] == 0).all()) and bool((grads[i + 1][where] == 0).all()), name
            assert bool((hv[i + 1][where] == 0).all()), name


def _kl_closed(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> float:
    """sum of KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2)/(2 s2^2) - 1/2, float64."""
    m1, s1, m2, s2 = (t.double() for t in (m1, s1, m2, s2))
    return float((torch.log(s2 / s1) + (s1 * s1 + (m1 - m2) ** 2) / (2 * s2 * s2) - 0.5).sum())


@pytest.mark.claim("C1")
@pytest.mark.parametrize("mean_shaped", [False, True])
@pytest.mark.parametrize("std_shaped", [False, True])
def test_kl_with_every_prior_form_matches_closed_form(mean_shaped: bool, std_shaped: bool) -> None:
    """KL() with a scalar or a weight-shaped prior mean and std, in every combination, against the float64 closed
    form: a weight-shaped prior covers the weights only; the biases take a scalar prior's value and N(0, 1)'s part
    otherwise (mean 0 where the mean is weight-shaped, std 1 where the std is). Tolerance: each KL term is a few
    float64 roundings on values of size <= 10, summed over 15 terms: 1e-12 relative is far above that and far
    below the effect of a wrong prior on the biases (>= 1e-2 here)."""
    torch.manual_seed(0)
    pm: object = torch.linspace(-0.5, 0.5, 12, dtype=torch.float64).reshape(3, 4) if mean_shaped else 0.3
    ps: object = torch.linspace(0.5, 2.0, 12, dtype=torch.float64).reshape(3, 4) if std_shaped else 1.7
    layer = BBBLinear(4, 3, prior_mean=pm, prior_std=ps, dtype=torch.float64)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight_mu.uniform_(-1, 1)
        layer.bias_mu.uniform_(-1, 1)  # type: ignore[union-attr]
        layer.weight_rho.uniform_(-2, 0)  # type: ignore[union-attr]
        layer.bias_rho.uniform_(-2, 0)  # type: ignore[union-attr]
    ws, bs = torch.exp(layer.weight_rho.detach()), torch.exp(layer.bias_rho.detach())  # type: ignore[union-attr]
    wm, bm = layer.weight_mu.detach(), layer.bias_mu.detach()  # type: ignore[union-attr]
    pm_w = pm if isinstance(pm, torch.Tensor) else torch.full((3, 4), pm, dtype=torch.float64)
    ps_w = ps if isinstance(ps, torch.Tensor) else torch.full((3, 4), ps, dtype=torch.float64)
    pm_b = torch.zeros(3, dtype=torch.float64) if mean_shaped else torch.full((3,), 0.3, dtype=torch.float64)
    ps_b = torch.ones(3, dtype=torch.float64) if std_shaped else torch.full((3,), 1.7, dtype=torch.float64)
    want = _kl_closed(wm, ws, pm_w, ps_w) + _kl_closed(bm, bs, pm_b, ps_b)
    kl, n = layer.KL()
    assert n == 15
    assert abs(float(kl.detach()) - want) <= 1e-12 * abs(want), (float(kl), want)


@pytest.mark.parametrize("cls", [BBBLinear, LRLinear, CLTLinear, CLTLinearDet])
def test_constructor_arguments_reach_the_layer(cls: type[BayesianLinear]) -> None:
    """Each subclass passes its constructor's arguments on: the device (meta), the priors (C1's prior is the one
    given), bias, use_softplus and manual_reset, whose default is off as in ObjectRL."""
    layer = cls(4, 3, device="meta")
    assert layer.weight_mu.is_meta and not layer.get_manual_reset()
    if cls is CLTLinearDet:
        return
    layer = cls(4, 3, bias=False, prior_mean=0.25, prior_std=1.5, use_softplus=True, manual_reset=True)
    assert float(layer.prior_mean) == 0.25 and float(layer.prior_std) == 1.5
    assert layer.bias_mu is None and layer.use_softplus and layer.get_manual_reset()


@pytest.mark.parametrize("act", ["relu", "crelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clt_moments_of_a_3d_input_match_its_rows(act: str, dtype: torch.dtype) -> None:
    """A (batch, seq, features) input gives, row by row, the moments of the same rows as a 2-D batch, on the path
    that runs at >= 4096 weights (CReLU concatenates its two halves along the last dim); identical values."""
    torch.manual_seed(0)
    layer = CLTLinear(64, 80, act=act, is_input=False, dtype=dtype)  # type: ignore[arg-type]
    x, v = torch.randn(3, 5, 64, dtype=dtype), torch.rand(3, 5, 64, dtype=dtype)
    m3, v3 = layer(x, v)
    m2, v2 = layer(x.reshape(15, 64), v.reshape(15, 64))
    assert m3.shape == (3, 5, m2.shape[-1])
    torch.testing.assert_close(m3.reshape(15, -1), m2, rtol=0, atol=0)
    torch.testing.assert_close(v3.reshape(15, -1), v2, rtol=0, atol=0)


def test_lr_gradient_where_the_variance_underflows() -> None:
    """LRLinear at >= 4096 weights without bias: an input row of 1e-160 has x^2 sigma^2 below the smallest normal,
    where the std is clamped (C6) and its gradient is 0; the fused backward must match autograd of the clamped plain
    form (torch.func) there and elsewhere. Tolerance as in the second-order test above (float64, same sums in a
    different order): 1e-10 of the scale; an unmasked row would add ~x sigma^2/sqrt(tiny) ~ 1e-8 of it."""
    torch.manual_seed(0)
    layer = LRLinear(64, 80, bias=False, manual_reset=True, dtype=torch.float64)
    x = torch.randn(4, 64, dtype=torch.float64)
    x[0] = 1e-160
    layer(x)  # draws the noise once
    c = torch.randn(4, 80, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach() for p in layer.parameters())

    def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (xx,))
        return (c * out).sum()

    leaves = tuple(t.clone().requires_grad_() for t in (x, *params))
    got = torch.autograd.grad(loss(*leaves), leaves)
    want = torch.func.grad(loss, argnums=tuple(range(len(leaves))))(x, *params)
    for g, w in zip(got, want, strict=True):
        assert float((g - w).abs().max()) <= 1e-10 * (float(w.abs().max()) + 1.0)


def _native_gauss_available() -> bool:
    from rln_verified._native import gauss

    return bool(gauss.available())


class _StdOf(nn.Module):
    def __init__(self, layer: BayesianLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sw, _ = self.layer.std()
        vw, _ = self.layer.var()
        return sw + vw + 0.0 * x.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_std_under_jit_trace(dtype: torch.dtype) -> None:
    """Recorded (jit.trace), a float32 CPU std is the fused exp as the operator rln_verified::exp_clamp_f32 (the same
    kernel as eager: equal bit for bit, EXP-1); float64 records torch's exp and clamp. Both equal eager std + var."""
    torch.manual_seed(0)
    layer = BBBLinear(6, 4, dtype=dtype)
    with torch.no_grad():
        layer.weight_rho[0, 0] = -1e4  # clamped at the lower std bound
    mod = _StdOf(layer)
    x = torch.zeros(1, dtype=dtype)
    traced = torch.jit.trace(mod, (x,), check_trace=False)
    graph = str(traced.graph)
    assert ("rln_verified::exp_clamp_f32" in graph) == (dtype == torch.float32), graph
    want = mod(x)
    assert torch.equal(traced(x), want)


def test_stored_noise_under_vmap_refuses_with_the_reason() -> None:
    """manual_reset with stored noise of the batch's shape, under torch.func.vmap over samples (per-sample
    gradients): each call needs one row, and which stored row is whose is unknown, so it raises, saying what to do."""
    torch.manual_seed(0)
    layer = LRLinear(5, 3, manual_reset=True)
    x = torch.randn(4, 5)
    layer(x)  # stores noise of shape (4, 3)
    with pytest.raises(ValueError) as info:
        torch.func.vmap(layer)(x)
    assert str(info.value) == (
        "LRLinear: manual_reset keeps noise of shape (4, 3), but under a torch.func transform (vmap over samples: "
        "per-sample gradients) each call needs (3,), and which stored row belongs to which sample is unknown; for "
        "per-sample gradients use manual_reset=False (fresh noise per call), map mode, or vmap over a leading "
        "dimension that keeps the batch shape")


@pytest.mark.claim("C1")
def test_prior_errors_name_the_argument_in_full() -> None:
    """Every refused prior raises a ValueError that names the argument and what arrived, the same on the CPU and on
    the meta device (a number is checked before any tensor exists)."""
    cases: list[tuple[dict[str, object], str]] = [
        ({"prior_mean": "0"}, "prior_mean must be an int, a float or a tensor, got str"),
        ({"prior_std": "1"}, "prior_std must be an int, a float or a tensor, got str"),
        ({"prior_mean": math.inf}, "prior_mean must be finite, got inf"),
        ({"prior_std": math.inf}, "prior_std must be finite, got inf"),
        ({"prior_std": 0.0}, "prior_std must be > 0 and finite everywhere, got 0.0"),
        ({"prior_std": -1}, "prior_std must be > 0 and finite everywhere, got -1.0"),
        ({"prior_mean": torch.zeros(4, 3)},
         "prior_mean must be a scalar, a one-element tensor or weight-shaped (3, 4), got shape (4, 3)"),
        ({"prior_std": torch.ones(2)},
         "prior_std must be a scalar, a one-element tensor or weight-shaped (3, 4), got shape (2,)"),
        ({"prior_mean": torch.zeros(3, 4, dtype=torch.complex64)},
         "prior_mean must be a real tensor, got dtype torch.complex64"),
        ({"prior_std": torch.ones(3, 4, dtype=torch.complex64)},
         "prior_std must be a real tensor, got dtype torch.complex64"),
    ]
    for kwargs, message in cases:
        for device in ("cpu", "meta"):
            with pytest.raises(ValueError) as info:
                BBBLinear(4, 3, device=device, **kwargs)  # type: ignore[arg-type]
            assert str(info.value) == message, (kwargs, device)


@pytest.mark.claim("C1")
def test_prior_tensors_take_the_layer_dtype_and_device() -> None:
    """A tensor prior becomes a buffer in the layer's dtype and on its device; an integer tensor becomes the layer's
    floating dtype (the default dtype when none is given). A (1, 1) prior of a 1-to-1 layer is one number, shared by
    the weight and the bias, as a scalar prior is."""
    ints = torch.ones(3, 4, dtype=torch.int64) * 2
    assert BBBLinear(4, 3, prior_std=ints).prior_std.dtype == torch.get_default_dtype()
    layer = BBBLinear(4, 3, prior_std=ints, prior_mean=torch.zeros(3, 4), dtype=torch.float64)
    assert layer.prior_std.dtype == torch.float64 and layer.prior_mean.dtype == torch.float64
    assert torch.equal(layer.prior_std, torch.full((3, 4), 2.0, dtype=torch.float64))
    assert BBBLinear(4, 3, prior_mean=torch.zeros(3, 4), device="meta").prior_mean.is_meta
    torch.manual_seed(0)
    one = BBBLinear(1, 1, prior_mean=torch.tensor([[0.5]]), prior_std=torch.tensor([[2.0]]), dtype=torch.float64)
    num = BBBLinear(1, 1, prior_mean=0.5, prior_std=2.0, dtype=torch.float64)
    num.load_state_dict(one.state_dict())
    assert one.prior_mean.shape == (1,) and one.prior_std.shape == (1,)
    assert torch.equal(one.KL()[0], num.KL()[0])


def test_initialization_is_nn_linear_s_and_the_documented_std() -> None:
    """reset_parameters (ObjectRL's): weight means Kaiming-uniform with a = sqrt 5, i.e. uniform in
    [-1/sqrt(fan_in), 1/sqrt(fan_in)] as nn.Linear's; bias means uniform in the same interval; every std exactly
    INIT_STD, with exp and with softplus. Over 60,000 draws the sample max of |w| is within 1e-3 of the bound
    (P(all below 0.999 bound) = 0.999^60000 < 1e-26) and the bias takes both signs."""
    torch.manual_seed(0)
    layer = BBBLinear(300, 200, dtype=torch.float64)
    bound = 1.0 / math.sqrt(300)
    w = layer.weight_mu.detach().abs()
    assert float(w.max()) <= bound and float(w.max()) >= 0.999 * bound
    b = layer.bias_mu.detach()  # type: ignore[union-attr]
    assert float(b.abs().max()) <= bound and float(b.min()) < 0 < float(b.max())
    for softplus in (False, True):
        lay = BBBLinear(5, 3, use_softplus=softplus, dtype=torch.float64)
        sw, sb = lay.std()
        torch.testing.assert_close(sw, torch.full_like(sw, INIT_STD), rtol=4e-16, atol=0)
        assert sb is not None
        torch.testing.assert_close(sb, torch.full_like(sb, INIT_STD), rtol=4e-16, atol=0)


@pytest.mark.skipif(not _native_gauss_available(), reason="the gauss.c kernel is not built here")
def test_small_float32_std_is_the_fused_kernel_s_exp() -> None:
    """float32 on the CPU, std() is the fused kernel's exp (EXP-1, within 0.99 ulp) at every size, below the size
    where the autograd Function pays off too: bit for bit the kernel's output, which differs from torch.exp at
    hundreds of these 3,000 values."""
    import math as _m

    from rln_verified._native import gauss

    layer = BBBLinear(60, 50)
    with torch.no_grad():
        layer.weight_rho.copy_(torch.linspace(-8, 3, 3000).reshape(50, 60))  # type: ignore[union-attr]
    lo, hi = std_bounds(torch.float32)
    rho = layer.weight_rho.detach()  # type: ignore[union-attr]
    want, _, _ = gauss.exp_clamp(rho.contiguous(), _m.log(lo), _m.log(hi), False, None)
    assert torch.equal(layer.std()[0], want)
    assert torch.equal(layer.var()[0], want * want)


@pytest.mark.claim("C1")
def test_default_prior_is_the_standard_normal() -> None:
    """No prior given: N(0, 1) for every weight and bias (ObjectRL's default), also after meta construction,
    to_empty and reset_parameters."""
    for device in ("cpu", "meta"):
        layer = BBBLinear(4, 3, device=device)
        if device == "meta":
            layer.to_empty(device="cpu")
            layer.reset_parameters()
        assert torch.equal(layer.prior_mean, torch.zeros(1)) and torch.equal(layer.prior_std, torch.ones(1))


@pytest.mark.claim("C1")
def test_kl_of_a_two_weight_layer_with_a_two_element_std_prior() -> None:
    """The mirror case of the test below: a scalar mean and a weight-shaped std of two elements; the bias takes the
    scalar mean and N(0, 1)'s std (closed form, float64)."""
    ps = torch.tensor([[1.5, 2.5]], dtype=torch.float64)
    layer = BBBLinear(2, 1, prior_mean=0.25, prior_std=ps, dtype=torch.float64)
    ws, bs = layer.std()
    assert bs is not None and layer.bias_mu is not None
    want = _kl_closed(layer.weight_mu.detach(), ws.detach(), torch.full((1, 2), 0.25, dtype=torch.float64), ps)
    want += _kl_closed(layer.bias_mu.detach(), bs.detach(), torch.full((1,), 0.25, dtype=torch.float64),
                       torch.ones(1, dtype=torch.float64))
    assert abs(float(layer.KL()[0].detach()) - want) <= 1e-12 * abs(want)


@pytest.mark.claim("C1")
def test_kl_of_a_two_weight_layer_with_a_weight_shaped_prior() -> None:
    """A weight-shaped prior with exactly two elements (a 2-to-1 layer) is still weight-shaped: it covers the two
    weights, and the bias keeps N(0, 1)'s part where the prior is weight-shaped (closed form, float64)."""
    pm = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    layer = BBBLinear(2, 1, prior_mean=pm, prior_std=2.0, dtype=torch.float64)
    ws, bs = layer.std()
    assert bs is not None and layer.bias_mu is not None
    want = _kl_closed(layer.weight_mu.detach(), ws.detach(), pm,
                      torch.full((1, 2), 2.0, dtype=torch.float64))
    want += _kl_closed(layer.bias_mu.detach(), bs.detach(), torch.zeros(1, dtype=torch.float64),
                       torch.full((1,), 2.0, dtype=torch.float64))
    assert abs(float(layer.KL()[0].detach()) - want) <= 1e-12 * abs(want)


@pytest.mark.claim("C6")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layers_use_the_float32_std_range(dtype: torch.dtype) -> None:
    """float16 and bfloat16 layers compute their std in float32 and cast back, so std_bounds is float32's (with
    float16's own range the lower bound would be tiny16^(1/4) = 0.088, above INIT_STD): the initial std is INIT_STD
    up to the rounding of rho, not clamped. Tolerance: rho = log(0.01) = -4.6 is stored in the dtype with an error
    of at most half its ulp, 2^(2 - p)/2 (p = 10 fraction bits for float16, 7 for bfloat16), which moves the std by
    the factor e^(that) ~ 1 + 2^(1 - p); the result's rounding adds 2^-(p + 1)."""
    assert std_bounds(dtype) == std_bounds(torch.float32)
    sw, _ = BBBLinear(5, 3, dtype=dtype).std()
    assert sw.dtype == dtype
    p = 10 if dtype == torch.float16 else 7
    tol = math.expm1(2.0 ** (1 - p)) + 2.0 ** -(p + 1)
    assert float((sw.double() / INIT_STD - 1).abs().max()) <= tol


@pytest.mark.claim("C6")
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clamped_rho_has_zero_gradient_on_the_float32_fused_clt_path(act: str) -> None:
    """float32 on the CPU, the CLT activation joins the fused node (RELU-6); a rho below the lower std bound
    (log tiny32^(1/4) = -21.8) is clamped there, and its gradient is exactly 0 (C6), for weights and biases; the
    others are finite and not all 0."""
    torch.manual_seed(0)
    layer = CLTLinear(64, 80, act=act, is_input=False)  # type: ignore[arg-type]
    assert layer.weight_rho is not None and layer.bias_rho is not None
    with torch.no_grad():
        layer.weight_rho[0, :8] = -30.0
        layer.bias_rho[:2] = -30.0
    x, v = torch.randn(4, 64), torch.rand(4, 64)
    m, var = layer(x, v)
    loss = (torch.randn_like(m) * m).sum() + (torch.rand_like(var) * var).sum()
    gw, gb = torch.autograd.grad(loss, [layer.weight_rho, layer.bias_rho])
    assert bool((gw[0, :8] == 0).all()) and bool((gb[:2] == 0).all())
    assert bool(torch.isfinite(gw).all()) and bool((gw[1:] != 0).any()) and bool((gb[2:] != 0).any())


# ---- the functional entries (_bayesian_ops): what the layers do not reach ------------------------------------------


def _entry_params(dt: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    wm, bm = torch.randn(4, 6, generator=g, dtype=dt), torch.randn(4, generator=g, dtype=dt)
    rw, rb = torch.randn(4, 6, generator=g, dtype=dt) - 1, torch.randn(4, generator=g, dtype=dt) - 1
    return wm, bm, rw, rb


@pytest.mark.claim("C5")
@pytest.mark.parametrize("use_softplus", [False, True])
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 6)])
def test_entries_draw_fresh_standard_normal_noise_by_default(use_softplus: bool, shape: tuple[int, ...]) -> None:
    """Without a noise source the sampling entries draw ``torch.randn`` of the weights' (BBB: weights then bias)
    or the output's (LR) shape, dtype and device: under one seed, the same values as the forms written out with
    those draws. float64, so the single node and the written-out form agree to rounding (2^-52 relative per
    operation, a few operations: 1e-13 is far above that and far below any wrong draw's effect)."""
    wm, bm, rw, rb = _entry_params()
    x = torch.randn(*shape, dtype=torch.float64)
    sd = (lambda r: torch.nn.functional.softplus(r)) if use_softplus else torch.exp
    cfg = SampleConfig(use_softplus=use_softplus)
    torch.manual_seed(5)
    y = bbb_linear(x, wm, bm, rw, rb, cfg)
    torch.manual_seed(5)
    ew, eb = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ref = torch.nn.functional.linear(x, wm + sd(rw) * ew, bm + sd(rb) * eb)
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    torch.manual_seed(6)
    y = lr_linear(x, wm, bm, rw, rb, cfg)
    torch.manual_seed(6)
    e = torch.randn(*shape[:-1], 4, dtype=torch.float64)
    ref = torch.nn.functional.linear(x, wm, bm) + torch.sqrt(
        torch.nn.functional.linear(x * x, sd(rw) ** 2, sd(rb) ** 2)) * e
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    eps = fresh_noise("bias", (2, 3), torch.float64, torch.device("meta"))
    assert eps.shape == (2, 3) and eps.dtype == torch.float64 and eps.is_meta


@pytest.mark.parametrize("entry", ["bbb_linear", "lr_linear", "clt_linear"])
def test_entries_that_sample_need_rho_outside_map_mode(entry: str) -> None:
    """weight_rho None: a ValueError naming the entry outside MAP mode; in MAP mode the posterior mean alone."""
    wm, bm, _, _ = _entry_params()
    x = torch.randn(3, 6, dtype=torch.float64)
    msg = f"{entry} samples from the posterior and needs weight_rho; got None"
    for autocast in (False, True):  # under autocast the entry runs again in the compute dtype, same message
        with pytest.raises(ValueError, match=f"^{msg}$"), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            if entry == "clt_linear":
                clt_linear(x, None, wm, bm, None, None, MomentConfig(is_input=True))
            else:
                (bbb_linear if entry == "bbb_linear" else lr_linear)(x, wm, bm, None, None, SampleConfig())
    if entry == "clt_linear":
        m, v = clt_linear(x, None, wm, bm, None, None, MomentConfig(map=True, is_output=True))
        assert v is None and torch.equal(m, torch.nn.functional.linear(x, wm, bm))
    else:
        y = (bbb_linear if entry == "bbb_linear" else lr_linear)(x, wm, bm, None, None, SampleConfig(map=True))
        assert torch.equal(y, torch.nn.functional.linear(x, wm, bm))


def test_moment_entries_report_errors_under_the_configs_layer_name() -> None:
    wm, bm, rw, rb = _entry_params()
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^Mine: var_h is required for a non-input layer outside MAP mode"):
        clt_linear(x, None, wm, bm, rw, rb, MomentConfig(layer="Mine"))
    with pytest.raises(ValueError, match=r"^Other: var_h must be None in MAP mode"):
        clt_linear_det(x, x.abs(), wm, bm, MomentConfig(map=True, layer="Other"))


@pytest.mark.parametrize("cls", [BBBLinear, LRLinear])
@pytest.mark.parametrize("use_softplus", [False, True])
def test_sampling_layers_run_on_meta(cls: type[BayesianLinear], use_softplus: bool) -> None:
    """A layer built on meta runs a forward on meta (shape inference, as FSDP's deferred init uses): the noise is
    drawn on the parameters' device, in both the single-node form and the softplus form."""
    layer = cls(5, 3, use_softplus=use_softplus, device="meta")
    y = layer(torch.empty(2, 4, 5, device="meta"))
    assert y.is_meta and y.shape == (2, 4, 3)


@pytest.mark.claim("C3")
def test_clt_without_bias_under_torch_func() -> None:
    """CLTLinear without a bias under torch.func (its plain form, no bias variance): grad matches eager autograd."""
    torch.manual_seed(3)
    layer = CLTLinear(5, 3, bias=False, dtype=torch.float64)
    _posterior(layer, -1.0, seed=141)
    x, v = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    params = {k: p.detach() for k, p in layer.named_parameters()}

    def loss(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        m, var = torch.func.functional_call(layer, ps, (x, v))
        assert var is not None
        return (m * m).sum() + var.sum()

    got = torch.func.grad(loss)(params)
    want = torch.autograd.grad(loss(dict(layer.named_parameters())), list(layer.parameters()))
    for (name, g), w in zip(got.items(), want, strict=True):
        torch.testing.assert_close(g, w, rtol=_F64_RTOL, atol=0.0, msg=name)


def _sampling_layers() -> list[tuple[nn.Module, tuple[int, ...]]]:
    import rln_verified as rv

    return [(rv.BBBLinear(6, 3, manual_reset=True), (4, 6)), (rv.LRLinear(6, 3, manual_reset=True), (4, 6)),
            (rv.BBBConv2d(3, 4, 3, manual_reset=True), (2, 3, 6, 6)),
            (rv.LRConv2d(3, 4, 3, manual_reset=True), (2, 3, 6, 6))]


@pytest.mark.parametrize("cast", ["double", "bfloat16", "to_float64"])
def test_stored_noise_moves_with_the_parameters(cast: str) -> None:
    """.double(), .bfloat16() and .to(dtype) cast the noise kept under manual_reset with the parameters (C5): the
    output has the module's dtype, and the kept noise is the stored noise, cast (the same draw, not a new one)."""
    for m, shape in _sampling_layers():
        m(torch.randn(*shape))
        before = {a: getattr(m, a).clone() for a in ("_random_weight", "_random_bias") if getattr(m, a) is not None}
        assert before, type(m).__name__
        m = getattr(m, cast)() if cast != "to_float64" else m.to(torch.float64)
        dt = m.weight_mu.dtype
        assert m(torch.randn(*shape, dtype=dt)).dtype == dt, type(m).__name__
        for a, t in before.items():
            kept = getattr(m, a)
            assert kept.dtype == dt and torch.equal(kept, t.to(dt)), (type(m).__name__, a)


def test_noise_drawn_per_sample_under_vmap_is_refused_not_kept() -> None:
    """manual_reset with no stored noise under vmap(randomness='different'): each sample draws its own noise, which
    belongs to the transform. Keeping it would leave the module holding an escaped tensor (its next call crashed), so
    the call raises, and the module keeps nothing and still works."""
    from torch.func import functional_call, grad, vmap

    for m, shape in _sampling_layers():
        x = torch.randn(*shape)
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, m: nn.Module = m) -> torch.Tensor:
            return (functional_call(m, p, (xi[None],)) ** 2).sum()

        with pytest.raises(ValueError, match="cannot be kept after it"):
            vmap(grad(loss), in_dims=(None, 0), randomness="different")(params, x)
        assert m._random_weight is None and m._random_bias is None
        assert m(x).shape[0] == shape[0]


def test_noise_drawn_inside_grad_transforms_is_kept_plain() -> None:
    """Noise first drawn inside grad, jacrev or vmap(randomness='same') does not depend on the sample, so the layer
    keeps its plain values (no torch.func wrapper left on the module), and the next plain call reuses them."""
    from torch.func import functional_call, grad, jacrev, vmap

    for make in (lambda: _sampling_layers()[0][0], lambda: _sampling_layers()[1][0]):
        for how in ("grad", "jacrev", "vmap_same"):
            m = make()
            x = torch.randn(4, 6)
            params = {k: v.detach() for k, v in m.named_parameters()}

            def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, m: nn.Module = m) -> torch.Tensor:
                return (functional_call(m, p, (xi,)) ** 2).sum()

            if how == "grad":
                grad(loss)(params, x)
            elif how == "jacrev":
                jacrev(lambda xi, m=m: m(xi))(x)
            else:
                vmap(grad(loss), in_dims=(None, 0), randomness="same")(params, x[:, None])
            kept = m._random_weight
            assert kept is not None and not torch._C._functorch.is_functorch_wrapped_tensor(kept), (how, m)
            y1 = m(x if how != "vmap_same" else x[:1]).detach()
            assert torch.equal(m._random_weight, kept) and torch.isfinite(y1).all()


def test_to_empty_keeps_or_drops_the_stored_noise() -> None:
    """to_empty() on a module holding noise keeps the noise's values (it used to apply to_empty's fn to them and
    hand back uninitialized memory); after a move to meta the noise has no values and is dropped, so the next call
    draws it again."""
    for m, shape in _sampling_layers():
        x = torch.randn(*shape)
        m(x)
        before = m._random_weight.clone()
        m.to_empty(device="cpu")
        assert m._random_weight is not None and torch.equal(m._random_weight, before)
        m.to("meta")
        assert m._random_weight is not None and m._random_weight.is_meta
        m.to_empty(device="cpu")
        assert m._random_weight is None and m._random_bias is None


def test_export_with_a_dynamic_batch() -> None:
    """torch.export with a dynamic batch dimension: no size test of the fused-node choice runs while export records
    (safe_sqrt compared numel() with FUSE_MIN first, which guarded the batch to <= 4096/3 or 2 <= b <= 511 and failed
    the export). The CLT programs give eager's moments at another batch size; the sampling ones run there."""
    import rln_verified as rv

    torch.manual_seed(0)
    b = torch.export.Dim("b")
    for m in (rv.CLTLinear(4, 3, is_input=True), rv.BayesianMLP(4, 2, 2, 8, "clt")):
        ep = torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=({0: b},))
        x = torch.randn(7, 4)
        for got, want in zip(ep.module()(x), m(x), strict=True):
            assert torch.allclose(got, want, rtol=0.0, atol=0.0), type(m).__name__
    for m in (rv.LRLinear(4, 3), rv.BayesianMLP(4, 2, 2, 8, "lr"), rv.BBBLinear(4, 3)):
        ep = torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=({0: b},))
        y = ep.module()(torch.randn(7, 4))
        assert y.shape[0] == 7 and torch.isfinite(y).all(), type(m).__name__


@pytest.mark.claim("C6")
def test_float16_softplus_layers_compute_the_std_in_float32() -> None:
    """Under softplus a float16 layer clamped rho at float32's bound 65536 in float16, which torch refused ('value
    cannot be converted to type c10::Half without overflow') at the first call, KL() or std(). The std is computed
    in float32 and cast back, as std_bounds documents: forward, KL() and std() run, and the initial std is INIT_STD up
    to float16's rounding (tolerance as in test_half_precision_layers_use_the_float32_std_range, p = 10)."""
    import rln_verified as rv

    tol = math.expm1(2.0 ** -9) + 2.0 ** -11
    for m, shape in ((rv.LRLinear(3, 2, dtype=torch.float16, use_softplus=True), (4, 3)),
                     (rv.BBBConv2d(3, 2, 3, dtype=torch.float16, use_softplus=True), (1, 3, 5, 5))):
        y = m(torch.randn(*shape, dtype=torch.float16))
        assert y.dtype == torch.float16 and torch.isfinite(y).all()
        assert torch.isfinite(m.KL()[0])
        sw, _ = m.std()
        assert sw.dtype == torch.float16
        assert float((sw.double() / INIT_STD - 1).abs().max()) <= tol


def test_a_depth_one_mlp_has_no_norm_to_size() -> None:
    """depth 1 has no hidden layer, so has_norm inserts no norm and any width is fine (width 1 used to raise the
    window's width >= 2 rule); depth 2 with width 1 still raises it."""
    m = BayesianMLP(3, 2, 1, 1, layer_type="lr", has_norm=True)
    assert m(torch.randn(4, 3)).shape == (4, 2)
    with pytest.raises(ValueError, match="has_norm needs width >= 2"):
        BayesianMLP(3, 2, 2, 1, layer_type="lr", has_norm=True)
