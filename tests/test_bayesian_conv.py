"""Tests of CV1, CV2 and of C1, C4-C6 for the conv layers (proofs/bayesian_linear.md): BBBConv2d, LRConv2d,
CLTConv2d.

The exact halves are checks in rln_verified/verify/bayesian_linear.py (thin tests below); the Monte Carlo halves of
CV1 and CV2 are here, with fixed seeds and the z-bound derived at ``_Z_MAX``.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rln_verified import BayesianConv2d, BBBConv2d, CLTConv2d, LRConv2d
from rln_verified._bayesian_ops import ConvConfig, bbb_conv2d, clt_conv2d, lr_conv2d
from rln_verified.functional import relu_moments
from rln_verified.verify._core import assert_check

DTYPES = [torch.float64, torch.float32]
MODES = ["zeros", "reflect", "replicate", "circular"]
CONV_CLASSES: list[type[BayesianConv2d]] = [BBBConv2d, LRConv2d, CLTConv2d]

# z-bound for every Monte Carlo comparison, derived as in tests/test_bayesian_linear.py: each statistic is a mean
# or a (biased) sample variance of S >= 2e4 i.i.d. draws standardized by its own standard error (a variance's from
# the sample fourth central moment, the delta method), so N(0, 1) up to O(1/sqrt S); P(|Z| > 5) = 5.7e-7. The
# largest family here is CV1's 384 statistics (6 kinds x 32 outputs x 2 padding modes), so a correct layer fails
# for at most 384 * 5.7e-7 = 2.2e-4 of seeds (union bound); a 10% variance error moves z by 0.1 / sqrt(2/S) = 10.
# Every test prints S, its number of statistics and the worst |z| (pytest -s).
_Z_MAX = 5.0


def _z_mean(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (samples.mean(0) - mean) / torch.sqrt(var / samples.shape[0])


def _z_var(samples: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    c = samples - samples.mean(0)
    s2 = c.square().mean(0)
    m4 = c.pow(4).mean(0)
    return (s2 - var) / torch.sqrt((m4 - s2.square()) / samples.shape[0])


def _report_mc(what: str, s: int, n_stats: int, zs: dict[str, float]) -> None:
    detail = ", ".join(f"{k} {v:.2f}" for k, v in zs.items())
    print(f"\n[{what}] S = {s}, {n_stats} statistics, worst |z| = {max(zs.values()):.2f} (bound {_Z_MAX}): {detail}")


def _posterior(layer: BayesianConv2d, rho: float, seed: int, mu_scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(rho + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(mu_scale * torch.randn(p.shape, generator=g, dtype=torch.float64))


def _torch_conv(layer: BayesianConv2d, w: torch.Tensor, b: torch.Tensor | None) -> nn.Conv2d:
    """torch's nn.Conv2d with the layer's arguments and kernel ``w``, bias ``b``."""
    ref = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                    layer.dilation, layer.groups, b is not None, layer.padding_mode,  # type: ignore[arg-type]
                    dtype=w.dtype, device=w.device)
    with torch.no_grad():
        ref.weight.copy_(w)
        if b is not None:
            assert ref.bias is not None
            ref.bias.copy_(b)
    return ref


def _sampled_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, layer: BayesianConv2d) -> torch.Tensor:
    """S convolutions at once, sample s of ``x`` (S, C, H, W) with kernel ``w[s]`` and bias ``b[s]``: one grouped
    F.conv2d (groups = S * layer.groups) after the layer's padding (F.pad for the non-zero modes)."""
    s = x.shape[0]
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._pad, mode=layer.padding_mode)
        pad: Any = 0
    else:
        pad = layer.padding
    y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, *w.shape[2:]), b.reshape(-1), layer.stride, pad,
                 layer.dilation, s * layer.groups)
    return y.reshape(s, -1, *y.shape[2:])


def _sample_posterior(layer: BayesianConv2d, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    wm, bm = layer.mean()
    ws, bs = layer.std()
    assert bm is not None and bs is not None
    w = wm.detach() + ws.detach() * torch.randn((n, *wm.shape), generator=g, dtype=wm.dtype)
    b = bm.detach() + bs.detach() * torch.randn((n, *bm.shape), generator=g, dtype=bm.dtype)
    return w, b


# ---- thin property tests (the checks of rln-verify) ----------------------------------------------------------


@pytest.mark.claim("C1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_kl_closed_form(device: str, dtype: torch.dtype) -> None:
    assert_check("C1", "BayesianConv2d.KL", device, dtype)


@pytest.mark.claim("C4")
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_map_mode(device: str, dtype: torch.dtype) -> None:
    assert_check("C4", "BayesianConv2d", device, dtype)


@pytest.mark.claim("C5")
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_manual_reset(device: str, dtype: torch.dtype) -> None:
    assert_check("C5", "BayesianConv2d", device, dtype)


@pytest.mark.claim("C6")
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_finite_gradients(device: str, dtype: torch.dtype) -> None:
    assert_check("C6", "BayesianConv2d", device, dtype)


@pytest.mark.claim("CV1")
@pytest.mark.parametrize("subject", ["LRConv2d", "BBBConv2d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_sample_identities(subject: str, device: str, dtype: torch.dtype) -> None:
    assert_check("CV1", subject, device, dtype)


@pytest.mark.claim("CV2")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clt_conv_moments(device: str, dtype: torch.dtype) -> None:
    assert_check("CV2", "CLTConv2d", device, dtype)


# ---- C4: MAP mode is nn.Conv2d with the means ----------------------------------------------------------------

_GEOMETRIES = [
    {"padding": 1},
    {"padding": (2, 1)},
    {"padding": "same", "dilation": (2, 1)},
    {"padding": "same", "kernel_size": (2, 3)},  # even kernel: the extra padding goes after
    {"padding": "valid", "stride": 2},
    {"padding": 1, "stride": (2, 1), "dilation": 2},
    {"padding": (0, 2), "groups": 2},
]


@pytest.mark.claim("C4")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geo", _GEOMETRIES)
@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_map_is_nn_conv2d_bit_for_bit(cls: type[BayesianConv2d], geo: dict[str, Any], mode: str) -> None:
    """MAP mode returns, bit for bit, torch's nn.Conv2d built with the same arguments and the means copied in, for
    every padding mode and padding form, stride, dilation and groups, batched and unbatched."""
    kw = {"kernel_size": 3, **geo}
    kw_layer: dict[str, Any] = {"padding_mode": mode, "dtype": torch.float32, **kw}
    if cls is CLTConv2d:
        kw_layer["is_output"] = True
    layer = cls(4, 6, **kw_layer)
    _posterior(layer, -1.0, seed=1)
    layer.map(True)
    ref = _torch_conv(layer, layer.weight_mu.detach(), layer.bias_mu.detach() if layer.bias_mu is not None else None)
    x = torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on "same" with an even kernel
        for inp in (x, x[0]):
            want = ref(inp).detach()
            got = layer(inp)
            if isinstance(got, tuple):
                assert got[1] is None
                got = got[0]
            assert got.shape == want.shape and torch.equal(got, want), (cls.__name__, geo, mode)


# ---- C1: KL and n_params; a kernel-shaped prior ------------------------------------------------------------


def _td_kl(mu: torch.Tensor, s: torch.Tensor, pm: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:
    return torch.distributions.kl_divergence(torch.distributions.Normal(mu, s), torch.distributions.Normal(pm, ps))


@pytest.mark.claim("C1")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel_prior", [False, True])
def test_kl_matches_torch_distributions_and_counts_kernel_elements(bias: bool, kernel_prior: bool) -> None:
    """KL() is the sum of torch.distributions' Gaussian KLs over the kernel and the bias (a kernel-shaped prior
    covers the kernel, the bias keeps N(0, 1)), and n_params = out * in/groups * kH * kW (+ out)."""
    dt = torch.float64
    g = torch.Generator().manual_seed(5)
    shape = (6, 2, 3, 2)
    pm: Any = 0.3
    ps: Any = 1.7
    if kernel_prior:
        pm = torch.randn(shape, generator=g, dtype=dt)
        ps = torch.rand(shape, generator=g, dtype=dt) + 0.5
    layer = BBBConv2d(4, 6, (3, 2), groups=2, bias=bias, prior_mean=pm, prior_std=ps, dtype=dt)
    _posterior(layer, -1.0, seed=6)
    kl, n = layer.KL()
    assert n == 6 * 2 * 3 * 2 + (6 if bias else 0)
    ws, bs = layer.std()
    pm_t = torch.as_tensor(pm, dtype=dt).expand(shape)
    ps_t = torch.as_tensor(ps, dtype=dt).expand(shape)
    terms = [_td_kl(layer.weight_mu.detach(), ws.detach(), pm_t, ps_t).reshape(-1)]
    if bias:
        assert layer.bias_mu is not None and bs is not None
        bpm, bps = (0.0, 1.0) if kernel_prior else (pm, ps)
        terms.append(_td_kl(layer.bias_mu.detach(), bs.detach(), torch.full((6,), bpm, dtype=dt),
                            torch.full((6,), bps, dtype=dt)))
    want = torch.cat(terms)
    # Both sides are float64 sums of <= 78 terms: each of ours within 24 u64 of its size r^2 + d^2 + 1 + |ln r^2|
    # (KL-1), each of torch.distributions' within 8 u64 of it, and the two sums add gamma_78 of the sum of sizes.
    sq = torch.cat([ws.detach().reshape(-1)] + ([bs.detach()] if bs is not None else []))
    mq = torch.cat([layer.weight_mu.detach().reshape(-1)]
                   + ([layer.bias_mu.detach()] if layer.bias_mu is not None else []))
    sp = torch.cat([ps_t.reshape(-1)] + ([torch.full((6,), 1.0 if kernel_prior else ps, dtype=dt)] if bias else []))
    mp = torch.cat([pm_t.reshape(-1)] + ([torch.full((6,), 0.0 if kernel_prior else pm, dtype=dt)] if bias else []))
    r2, d2 = (sq / sp).square(), ((mq - mp) / sp).square()
    size = float((r2 + d2 + 1 + r2.log().abs()).sum())
    u = 2.0**-53
    tol = (32 * u + 2 * 78 * u / (1 - 78 * u)) * size
    k = float(kl.detach())
    assert abs(k - float(want.sum())) <= tol, (k, float(want.sum()), tol)
    assert k > 0.0


@pytest.mark.claim("C1")
def test_kernel_shaped_prior_is_accepted_and_wrong_shapes_name_the_kernel() -> None:
    shape = (4, 1, 3, 3)
    layer = LRConv2d(2, 4, 3, groups=2, prior_mean=torch.zeros(shape), prior_std=torch.full(shape, 2.0))
    assert layer.prior_std.shape == shape and layer.prior_mean.shape == shape
    with torch.no_grad():
        assert layer.bias_mu is not None and layer.bias_rho is not None
        layer.weight_mu.zero_()
        layer.weight_rho.fill_(math.log(2.0))  # type: ignore[union-attr]
        layer.bias_mu.zero_()
        layer.bias_rho.zero_()
    kl, n = layer.KL()  # posterior == prior on the kernel, N(0, 1) on the bias: exactly 0
    assert float(kl) == 0.0 and n == 4 * 9 + 4
    msg = "prior_std must be a scalar, a one-element tensor or weight-shaped (4, 1, 3, 3), got shape (4, 9)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        LRConv2d(2, 4, 3, groups=2, prior_std=torch.ones(4, 9))


# ---- CV1: LR and BBB agree in distribution (Monte Carlo) ------------------------------------------------------


@pytest.mark.claim("CV1")
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_lr_matches_bbb_monte_carlo(mode: str) -> None:
    """Every output element of BBBConv2d (a kernel draw per call) and of LRConv2d (noise per element) has mean
    conv(x, mu) + mu_b and variance conv(x^2, sigma^2) + sigma_b^2, border elements included."""
    dt = torch.float64
    s = 20_000
    bbb = BBBConv2d(2, 2, 3, padding=1, padding_mode=mode, dtype=dt)
    _posterior(bbb, -1.0, seed=11)
    lr = LRConv2d(2, 2, 3, padding=1, padding_mode=mode, dtype=dt)
    lr.load_state_dict(bbb.state_dict())
    x = torch.linspace(-1.5, 2.0, 32, dtype=dt).reshape(1, 2, 4, 4)
    wm, bm = bbb.mean()
    wv, bv = bbb.var()
    assert bm is not None and bv is not None
    mean = _torch_conv(bbb, wm.detach(), bm.detach())(x).detach()[0]
    var = _torch_conv(bbb, wv.detach(), bv.detach())(x.square()).detach()[0]
    torch.manual_seed(12)
    with torch.no_grad():
        y_bbb = torch.cat([bbb(x) for _ in range(s)])
        y_lr = lr(x.expand(s, -1, -1, -1))
    zs = {
        "bbb mean": _z_mean(y_bbb, mean, var), "bbb var": _z_var(y_bbb, var),
        "lr mean": _z_mean(y_lr, mean, var), "lr var": _z_var(y_lr, var),
        "lr-bbb mean": (y_lr.mean(0) - y_bbb.mean(0)) / torch.sqrt((y_lr.var(0) + y_bbb.var(0)) / s),
        "lr-bbb var": (_z_var(y_lr, var) - _z_var(y_bbb, var)) / math.sqrt(2.0),
    }
    worst = {k: float(v.abs().max()) for k, v in zs.items()}
    _report_mc(f"CV1 LR vs BBB, {mode}", s, sum(v.numel() for v in zs.values()), worst)
    assert max(worst.values()) <= _Z_MAX, worst


# ---- CV2: CLT moments (Monte Carlo) ------------------------------------------------------------------------


def _clt_setup(mode: str) -> tuple[CLTConv2d, torch.Tensor, torch.Tensor]:
    dt = torch.float64
    layer = CLTConv2d(2, 2, 3, padding=1, padding_mode=mode, is_output=True, dtype=dt)
    _posterior(layer, -0.7, seed=21)
    g = torch.Generator().manual_seed(22)
    mu_h = torch.randn(1, 2, 4, 4, generator=g, dtype=dt)
    var_h = torch.rand(1, 2, 4, 4, generator=g, dtype=dt) * 2.0 + 0.5
    return layer, mu_h, var_h


def _mc_preact(layer: CLTConv2d, mu_h: torch.Tensor, var_h: torch.Tensor, s: int, seed: int) -> torch.Tensor:
    """S pre-activations: a fresh kernel, bias and independent input elements per sample."""
    g = torch.Generator().manual_seed(seed)
    w, b = _sample_posterior(layer, s, g)
    h = mu_h + var_h.sqrt() * torch.randn((s, *mu_h.shape[1:]), generator=g, dtype=mu_h.dtype)
    return _sampled_conv(h, w, b, layer)


@pytest.mark.claim("CV2")
def test_clt_preactivation_exact_with_zero_padding_monte_carlo() -> None:
    """Zero padding, random input and kernel: (m, v) are the exact moments of every pre-activation element."""
    s = 40_000
    layer, mu_h, var_h = _clt_setup("zeros")
    with torch.no_grad():
        m, v = layer(mu_h, var_h)
    assert v is not None
    a = _mc_preact(layer, mu_h, var_h, s, seed=23)
    worst = {"mean": float(_z_mean(a, m[0], v[0]).abs().max()), "var": float(_z_var(a, v[0]).abs().max())}
    _report_mc("CV2 zero padding, pre-activation", s, 2 * m.numel(), worst)
    assert max(worst.values()) <= _Z_MAX, worst


def _true_variance(layer: CLTConv2d, mu_h: torch.Tensor, var_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact variance of each pre-activation element, repeats in a window included, and CV2 part 2's
    deviation 2 sum mu_a mu_b v_j over the repeated pairs; from the input index each window position reads (the
    padding applied to a tensor of indices), not from the layer's formula. One batch element, groups 1, stride 1."""
    c, hh, ww = mu_h.shape[1:]
    idx = torch.arange(c * hh * ww, dtype=torch.float64).reshape(1, c, hh, ww)
    padded = F.pad(idx, layer._pad, mode=layer.padding_mode)
    kh, kw = layer.kernel_size
    cols = F.unfold(padded, (kh, kw)).round().long()[0]  # (c kh kw, L): the input index under each kernel entry
    wm, _ = layer.mean()
    wv, bv = layer.var()
    assert bv is not None
    mu = mu_h.reshape(-1)
    vh = var_h.reshape(-1)
    n = mu.numel()
    out_var, dev = [], []
    for o in range(layer.out_channels):
        km, kv = wm.detach()[o].reshape(-1), wv.detach()[o].reshape(-1)
        for pos in range(cols.shape[1]):
            j = cols[:, pos]
            # A_j = the sum of the kernel entries that read h_j: mean M_j, variance S_j; Var(A_j h_j) exactly.
            mj = torch.zeros(n, dtype=torch.float64).index_add_(0, j, km)
            sj = torch.zeros(n, dtype=torch.float64).index_add_(0, j, kv)
            out_var.append(((vh + mu.square()) * sj + vh * mj.square()).sum() + bv[o].detach())
            sum_sq = torch.zeros(n, dtype=torch.float64).index_add_(0, j, km.square())
            dev.append((vh * (mj.square() - sum_sq)).sum())  # 2 sum_{a<b} mu_a mu_b over repeats = M^2 - sum mu^2
    shape = (layer.out_channels, hh, ww)
    return torch.stack(out_var).reshape(shape), torch.stack(dev).reshape(shape)


@pytest.mark.claim("CV2")
def test_clt_reflect_border_variance_deviation_monte_carlo() -> None:
    """Reflect padding, random input: m is exact everywhere; v is exact where no window repeats an input element and
    misses exactly 2 mu_a mu_b v_j per repeated pair at the border. Monte Carlo agrees with the true variance
    v + deviation, and rejects v alone at the border."""
    s = 40_000
    layer, mu_h, var_h = _clt_setup("reflect")
    with torch.no_grad():
        m, v = layer(mu_h, var_h)
        true_var, dev = _true_variance(layer, mu_h, var_h)
    assert v is not None
    m, v = m[0], v[0]
    border = dev != 0
    assert bool(border.any()) and not bool(border[:, 1:-1, 1:-1].any())  # only the border windows repeat
    # v + dev is the true variance within float64 rounding: ~20 nonnegative terms, gamma_40 of their size.
    size = true_var.abs() + 2 * dev.abs()
    assert bool(((v + dev - true_var).abs() <= 40 * 2.0**-53 / (1 - 40 * 2.0**-53) * size).all())
    a = _mc_preact(layer, mu_h, var_h, s, seed=24)
    z_m = _z_mean(a, m, true_var)
    z_true = _z_var(a, true_var)
    z_formula = _z_var(a, v)
    worst = {"mean": float(z_m.abs().max()), "var (v + deviation)": float(z_true.abs().max())}
    _report_mc("CV2 reflect padding, pre-activation", s, 2 * m.numel(), worst)
    print(f"[CV2 reflect] worst |z| of v alone at the border: {float(z_formula[border].abs().max()):.2f}")
    assert max(worst.values()) <= _Z_MAX, worst
    assert float(z_formula[border].abs().max()) > _Z_MAX  # the stated deviation is real and visible


@pytest.mark.claim("CV2")
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_activation_and_crelu_doubles_the_channels(act: str) -> None:
    """After the activation: relu_moments of (m, sqrt(v)) bit for bit; CReLU concatenates the moments of m and -m
    on the channel dimension (out -> 2 out), batched and unbatched, and in MAP mode."""
    layer = CLTConv2d(3, 4, 3, padding=1, act=act, is_input=True)  # type: ignore[arg-type]
    _posterior(layer, -1.0, seed=31)
    pre = CLTConv2d(3, 4, 3, padding=1, is_input=True, is_output=True)
    pre.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(32))
    for inp in (x, x[0]):
        m, v = pre(inp)
        mean, var = layer(inp)
        assert v is not None and var is not None
        s = torch.sqrt(v.clamp_min(torch.finfo(v.dtype).tiny))
        em, ev = relu_moments(m, s)
        if act == "crelu":
            en, evn = relu_moments(-m, s)
            em, ev = torch.cat([em, en], dim=-3), torch.cat([ev, evn], dim=-3)
        assert mean.shape[-3] == (8 if act == "crelu" else 4)
        assert torch.equal(mean, em) and torch.equal(var, ev)
        layer.map(True)
        pre.map(True)
        mm = pre(inp)[0]
        want = torch.relu(mm) if act == "relu" else torch.cat([torch.relu(mm), torch.relu(-mm)], dim=-3)
        assert torch.equal(layer(inp)[0], want)
        layer.map(False)
        pre.map(False)


# ---- C6: finite gradients ----------------------------------------------------------------------------------


@pytest.mark.claim("C6")
@pytest.mark.parametrize("rho", [-1e30, 1e30])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", CONV_CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_gradients_at_zero_input_and_saturated_rho(cls: type[BayesianConv2d], mode: str, rho: float,
                                                          dtype: torch.dtype) -> None:
    """A zero input (LR's variance is then sigma_b^2, or 0 without bias) and rho = +-1e30 (clamped): the std is in
    (0, inf), every gradient of output + KL is finite, and the clamped rho get gradient exactly 0."""
    kw: dict[str, Any] = {"padding": 1, "padding_mode": mode, "dtype": dtype}
    if cls is CLTConv2d:
        kw["is_input"] = True
    for bias in (True, False):
        layer = cls(2, 3, 2, bias=bias, **kw)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.endswith("_rho"):
                    p.fill_(rho)
        x = torch.zeros(2, 2, 3, 3, dtype=dtype, requires_grad=True)
        out = layer(x)
        loss = out[0].sum() + out[1].sum() if isinstance(out, tuple) else out.sum()
        ws, bs = layer.std()
        for sd in (ws, bs):
            assert sd is None or bool(((sd > 0) & torch.isfinite(sd)).all())
        (loss + layer.KL()[0]).backward()
        named: list[tuple[str, torch.Tensor]] = [*layer.named_parameters(), ("x", x)]
        for name, t in named:
            assert t.grad is not None and bool(torch.isfinite(t.grad).all()), (name, t.grad)
            if name.endswith("_rho"):
                assert bool((t.grad == 0).all()), name


# ---- C5: manual reset ----------------------------------------------------------------------------------------


@pytest.mark.claim("C5")
@pytest.mark.parametrize("cls", [BBBConv2d, LRConv2d])
def test_manual_reset_keeps_the_noise_until_reset(cls: type[BayesianConv2d]) -> None:
    """Stored noise: kernel- and bias-shaped for BBB, output-shaped for LR; identical outputs until
    reset_randomness(); a new batch shape asks for a reset; without manual_reset every call is fresh."""
    layer = cls(2, 3, 3, padding=1, padding_mode="circular", manual_reset=True)
    _posterior(layer, 0.0, seed=41)
    x = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(42))
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    stored = layer._random_weight
    assert stored is not None
    if cls is BBBConv2d:
        assert stored.shape == layer.weight_mu.shape and layer._random_bias is not None
    else:
        assert stored.shape == a.shape
    if cls is LRConv2d:
        msg = (f"LRConv2d: manual_reset keeps noise of shape {tuple(a.shape)}, but this call needs (1, 3, 4, 5); "
               "call reset_randomness() before changing the batch shape")
        with pytest.raises(ValueError, match=re.escape(msg)):
            layer(x[:1])
    layer.reset_randomness()
    c = layer(x)
    assert not torch.equal(a, c)
    layer.set_manual_reset(False)
    assert not torch.equal(layer(x), layer(x))
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}.reset_randomness needs manual_reset=True")):
        layer.reset_randomness()


# ---- construction and input errors -------------------------------------------------------------------------

_CTOR_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"in_channels": 0}, "in_channels must be a positive int, got 0"),
    ({"out_channels": True}, "out_channels must be a positive int, got True"),
    ({"groups": 2.0}, "groups must be a positive int, got 2.0"),
    ({"in_channels": 3, "groups": 2}, "in_channels (3) and out_channels (4) must both be divisible by groups (2)"),
    ({"kernel_size": (1, 2, 3)}, "kernel_size must be an int or a pair of ints, got (1, 2, 3)"),
    ({"kernel_size": 0}, "kernel_size must be an int or a pair of ints >= 1, got 0"),
    ({"stride": (1, 0)}, "stride must be an int or a pair of ints >= 1, got (1, 0)"),
    ({"dilation": "2"}, "dilation must be an int or a pair of ints, got '2'"),
    ({"padding": -1}, "padding must be an int or a pair of ints >= 0, got -1"),
    ({"padding": (1, 1.5)}, "padding must be an int or a pair of ints >= 0, got (1, 1.5)"),
    ({"padding_mode": "symmetric"},
     "padding_mode must be one of ('zeros', 'reflect', 'replicate', 'circular'), got 'symmetric'"),
    ({"padding": "full"}, "padding must be an int, a pair of ints, 'valid' or 'same', got 'full'"),
    ({"padding": "same", "stride": 2}, "padding='same' needs stride 1, as nn.Conv2d"),
    ({"dtype": torch.int32}, "dtype must be a floating-point dtype, got torch.int32"),
    ({"prior_std": 0.0}, "prior_std must be > 0 and finite everywhere, got 0.0"),
]


@pytest.mark.parametrize(("kwargs", "msg"), _CTOR_ERRORS)
@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_constructor_errors_in_full(cls: type[BayesianConv2d], kwargs: dict[str, Any], msg: str) -> None:
    args = {"in_channels": 2, "out_channels": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        cls(**args)


def test_clt_conv_act_error_and_base_forward() -> None:
    with pytest.raises(ValueError, match=re.escape("act must be 'relu' or 'crelu', got 'tanh'")):
        CLTConv2d(2, 2, 3, act="tanh")  # type: ignore[arg-type]
    msg = "BayesianConv2d: BayesianConv2d is a base class; use BBBConv2d, LRConv2d or CLTConv2d"
    with pytest.raises(NotImplementedError, match=re.escape(msg)):
        BayesianConv2d(2, 2, 3)(torch.zeros(1, 2, 3, 3))


@pytest.mark.claim("CV2")
def test_entry_input_checks_in_full() -> None:
    layer = LRConv2d(2, 2, 3)
    wm, bm, wr, br = (layer.weight_mu.detach(), layer.bias_mu, layer.weight_rho, layer.bias_rho)
    cfg = ConvConfig()
    with pytest.raises(TypeError, match=re.escape("bbb_conv2d: the input must be a floating-point tensor, got "
                                                  "torch.int64")):
        bbb_conv2d(torch.zeros(1, 2, 3, 3, dtype=torch.long), wm, bm, wr, br, cfg)
    with pytest.raises(TypeError, match=re.escape("lr_conv2d: the input must be a floating-point tensor, got list")):
        lr_conv2d([1.0], wm, bm, wr, br, cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("clt_conv2d: the input must be (N, C, H, W) or (C, H, W), got "
                                                   "shape (2, 3)")):
        clt_conv2d(torch.zeros(2, 3), None, wm, bm, wr, br, cfg)
    with pytest.raises(ValueError, match=re.escape("lr_conv2d samples from the posterior and needs weight_rho; got "
                                                   "None")):
        lr_conv2d(torch.zeros(1, 2, 3, 3), wm, bm, None, br, cfg)
    with pytest.raises(ValueError, match=re.escape("clt_conv2d samples from the posterior and needs weight_rho")):
        clt_conv2d(torch.zeros(1, 2, 3, 3), None, wm, bm, None, br, cfg._replace(is_input=True))
    clt = CLTConv2d(2, 2, 3)
    with pytest.raises(ValueError, match=re.escape("CLTConv2d: var_h is required for a non-input layer outside MAP "
                                                   "mode (set is_input=True for a deterministic input)")):
        clt(torch.zeros(1, 2, 3, 3))
    clt.map(True)
    with pytest.raises(ValueError, match=re.escape("CLTConv2d: var_h must be None in MAP mode (the MAP forward is "
                                                   "deterministic), got a tensor")):
        clt(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


# ---- autocast and meta -------------------------------------------------------------------------------------


@pytest.mark.claim("C4")
@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_autocast_computes_in_float32_and_returns_bfloat16(cls: type[BayesianConv2d]) -> None:
    """Under CPU autocast a float32 layer takes bfloat16 input, computes in float32 with autocast off, and returns
    bfloat16 equal, bit for bit, to its float32 result on the upcast input, cast (same noise: same seed)."""
    kw: dict[str, Any] = {"padding": 1, "padding_mode": "reflect"}
    layer = cls(3, 4, 3, **kw)
    _posterior(layer, -1.0, seed=51)
    g = torch.Generator().manual_seed(52)
    x16 = torch.randn(2, 3, 5, 5, generator=g).to(torch.bfloat16)
    v16 = torch.rand(2, 3, 5, 5, generator=g).to(torch.bfloat16)
    args32: tuple[torch.Tensor, ...] = (x16.float(), v16.float()) if cls is CLTConv2d else (x16.float(),)
    args16: tuple[torch.Tensor, ...] = (x16, v16) if cls is CLTConv2d else (x16,)
    torch.manual_seed(53)
    y = layer(*args32)
    torch.manual_seed(53)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = layer(*args16)
    for got, want in zip(ya if isinstance(ya, tuple) else (ya,), y if isinstance(y, tuple) else (y,)):
        assert want.dtype == torch.float32 and got.dtype == torch.bfloat16
        assert torch.equal(got, want.to(torch.bfloat16))


@pytest.mark.claim("C4")
@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_meta_construction_runs_and_materializes(cls: type[BayesianConv2d]) -> None:
    """Built on meta: a forward infers the shape; to_empty + reset_parameters gives a working layer with the
    nn.Conv2d initialization ranges and std 0.01."""
    kw: dict[str, Any] = {"stride": 2, "padding": 1, "device": "meta"}
    if cls is CLTConv2d:
        kw["is_input"] = True
    layer = cls(3, 4, 3, **kw)
    assert layer.weight_mu.is_meta and layer.prior_std.is_meta  # the factory device reaches every tensor
    out = layer(torch.empty(2, 3, 7, 7, device="meta"))
    y = out[0] if isinstance(out, tuple) else out
    assert y.is_meta and y.shape == (2, 4, 4, 4)
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    bound = 1.0 / math.sqrt(3 * 9)
    assert layer.bias_mu is not None and bool((layer.bias_mu.abs() <= bound).all())
    ws, _ = layer.std()
    # rho = log 0.01 rounded to float32 (|rho| u32 = 2.7e-7 absolute, so relative in exp(rho)), then exp within one
    # ulp (EXP-1): 4 eps32 covers both.
    assert torch.allclose(ws, torch.full_like(ws, 0.01), rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    out = layer(torch.randn(2, 3, 7, 7))
    y = out[0] if isinstance(out, tuple) else out
    assert y.shape == (2, 4, 4, 4) and bool(torch.isfinite(y).all())


def test_constructor_arguments_reach_the_layer() -> None:
    """Every constructor argument takes effect, for the base's and CLTConv2d's own signature: the defaults are
    nn.Conv2d's (padding 0), use_softplus, manual_reset, the priors and the device pass through, and the fan-in of a
    non-square kernel sets the bias range (in / groups * kH * kW, as nn.Conv2d)."""
    x = torch.randn(2, 3, 7, 9)
    assert BBBConv2d(3, 4, 3)(x).shape == (2, 4, 5, 7)  # padding 0 by default
    clt = CLTConv2d(3, 4, 3, is_input=True)
    assert clt(x)[0].shape == (2, 4, 5, 7) and not clt.get_manual_reset()
    full = CLTConv2d(3, 4, 3, prior_mean=0.5, prior_std=2.0, use_softplus=True, manual_reset=True, device="meta")
    assert full.use_softplus and full.get_manual_reset() and full.weight_mu.is_meta
    plain = CLTConv2d(3, 4, 3, prior_mean=0.5, prior_std=2.0)
    assert float(plain.prior_mean.reshape(-1)[0]) == 0.5 and float(plain.prior_std.reshape(-1)[0]) == 2.0
    soft = BBBConv2d(3, 4, 3, use_softplus=True)
    assert soft.use_softplus
    assert soft.weight_rho is not None
    torch.testing.assert_close(soft.std()[0], F.softplus(soft.weight_rho.detach()), rtol=1e-6, atol=0.0)
    # bias means uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]: with 4000 of them the largest is above 0.99 of the
    # bound except with probability 0.99^4000 < 1e-17, and a fan-in of 3 * 5 * 5 (kH taken for kW) would cap it at
    # sqrt(15/75) = 0.45 of it
    wide = BBBConv2d(3, 4000, (1, 5))
    assert wide.bias_mu is not None
    bound = 1.0 / math.sqrt(3 * 1 * 5)
    top = float(wide.bias_mu.detach().abs().max())
    assert 0.99 * bound < top <= bound


@pytest.mark.parametrize("cls", [BBBConv2d, LRConv2d])
def test_float64_layers_draw_float64_noise(cls: type[BayesianConv2d]) -> None:
    """A float64 layer keeps float64 noise (kernel, bias and LR's output noise), not the default dtype's."""
    layer = cls(3, 4, 3, padding=1, manual_reset=True, dtype=torch.float64)
    layer(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    stored = [t for t in (layer._random_weight, layer._random_bias) if t is not None]
    assert stored and all(t.dtype == torch.float64 for t in stored)


@pytest.mark.parametrize("entry", ["bbb_conv2d", "lr_conv2d", "clt_conv2d"])
def test_conv_entries_need_rho_outside_map_mode(entry: str) -> None:
    """weight_rho None: a ValueError naming the entry, with and without autocast; MAP mode needs no rho, also under
    autocast (where the entry runs again in float32 and casts the result)."""
    wm, bm = torch.randn(4, 3, 3, 3), torch.randn(4)
    x = torch.randn(2, 3, 5, 5)
    for autocast in (False, True):
        with pytest.raises(ValueError, match=f"^{entry} samples from the posterior and needs weight_rho; got None$"), \
                torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            if entry == "clt_conv2d":
                clt_conv2d(x, None, wm, bm, None, None, ConvConfig(is_input=True))
            else:
                (bbb_conv2d if entry == "bbb_conv2d" else lr_conv2d)(x, wm, bm, None, None, ConvConfig())
    if entry != "clt_conv2d":
        fn = bbb_conv2d if entry == "bbb_conv2d" else lr_conv2d
        with torch.autocast("cpu", torch.bfloat16):
            y = fn(x.bfloat16(), wm, bm, None, None, ConvConfig(map=True))
        assert y.dtype == torch.bfloat16 and torch.equal(y, F.conv2d(x.bfloat16().float(), wm, bm).bfloat16())


def test_a_subclass_is_named_in_its_errors() -> None:
    class MyCLT(CLTConv2d):
        pass

    with pytest.raises(ValueError, match=r"^MyCLT: var_h is required"):
        MyCLT(3, 4, 3)(torch.randn(1, 3, 5, 5))


def test_the_shared_base_forward_raises() -> None:
    """BayesianLayer holds the posterior of both families; its own forward names what to use instead."""
    from rln_verified import BayesianLayer

    base = BayesianLayer((4, 3, 3, 3), 4, 27)
    assert base.weight_mu.shape == (4, 3, 3, 3) and base.bias_mu is not None and base.bias_mu.shape == (4,)
    with pytest.raises(NotImplementedError, match=r"^BayesianLayer: BayesianLayer is a base class; use a Bayesian "
                                                  r"linear or conv layer$"):
        base(torch.randn(1, 3, 5, 5))
