"""elbo and predictive (rln_verified._bayesian_train): the KL convention, the sampling statistics, the closed form
of CLT models, the argument checks, and that no layer's state is left changed."""

from __future__ import annotations

import copy
import doctest
import math
import re
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

import rln_verified._bayesian_train as train_mod
from rln_verified import BayesianLinear, BayesianMLP, BBBLinear, CLTLinear, LRLinear, elbo, predictive

EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
M = TypeVar("M", bound=nn.Module)


def _perturb(model: M, seed: int = 0) -> M:
    """Move every posterior away from its initial value (std 0.01 everywhere) so the layers' KLs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BayesianLinear):
                for p in (m.weight_mu, m.bias_mu):
                    if p is not None:
                        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
                for p in (m.weight_rho, m.bias_rho):
                    if p is not None:
                        # std = exp(rho) in [e^-3, e^-1]: the KL terms are O(1), away from 0
                        p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-3.0, -1.0, generator=g))
    return model


def _posterior_layers(model: nn.Module) -> list[BayesianLinear]:
    return [m for m in model.modules() if isinstance(m, BayesianLinear) and m.weight_rho is not None]


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp-bbb": BayesianMLP(3, 2, depth=3, width=5, layer_type="bbb"),
        "mlp-lr": BayesianMLP(3, 2, depth=3, width=5, layer_type="lr"),
        "sequential": nn.Sequential(BBBLinear(3, 4), nn.ReLU(), nn.Linear(4, 4), BBBLinear(4, 2)),
    }


# ---- elbo ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp-bbb", "mlp-lr", "sequential"])
def test_elbo_is_nll_plus_weighted_kl_sum_over_n_data(name: str) -> None:
    model = _perturb(_models()[name])
    layers = _posterior_layers(model)
    assert len(layers) >= 2
    nll = torch.tensor(0.75)
    n_data, w = 1000, 0.3
    with torch.no_grad():
        kls = [layer.KL()[0] for layer in layers]
        want = nll + w * sum(kls, torch.zeros(())) / n_data  # nn.Linear and ReLU add nothing
        got = elbo(model, nll, n_data, kl_weight=w)
    assert got.dim() == 0 and got.dtype == torch.float32
    # Both sides are float32 sums of the same L <= 3 nonnegative layer KLs, possibly in another order, then one
    # multiply, one divide and one add of nonnegative terms: at most (L - 1) + 3 roundings, each <= eps of the
    # result's magnitude, so rtol = 8 eps covers it.
    torch.testing.assert_close(got, want, rtol=8 * EPS32, atol=0.0)
    # The KL term is not negligible here, so a wrong scaling (n_data -> batch size, mean per parameter) fails.
    assert (w * sum(float(k) for k in kls) / n_data) > 100 * 8 * EPS32 * float(want)


@pytest.mark.claim("C1")
def test_elbo_kl_term_matches_torch_distributions_float64() -> None:
    torch.manual_seed(1)
    layer = _perturb(BBBLinear(2, 3, bias=True, prior_mean=0.3, prior_std=0.7, dtype=torch.float64), seed=1)
    assert isinstance(layer, BBBLinear)
    with torch.no_grad():
        kl = elbo(layer, torch.zeros((), dtype=torch.float64), n_data=1)  # nll 0, n 1, weight 1: the KL itself
        (wm, bm), (ws, bs) = layer.mean(), layer.std()
        assert bm is not None and bs is not None
        loc_q, scale_q = torch.cat([wm.flatten(), bm]), torch.cat([ws.flatten(), bs])
        # A scalar prior is shared by weights and biases.
        loc_p = layer.prior_mean.expand_as(loc_q)
        scale_p = layer.prior_std.expand_as(scale_q)
        terms = kl_divergence(Normal(loc_q, scale_q), Normal(loc_p, scale_p))
        ref = terms.sum()
        # Bound: torch's form is 0.5 (r + t - 1 - log r), r = (s_q/s_p)^2, t = ((m_q - m_p)/s_p)^2, about 8
        # roundings each at most eps times the largest intermediate, so |error_i| <= 8 eps M_i with
        # M_i = r + t + 1 + |log r|; kl_normal is cancellation-free (KL-1), within a few eps of KL_i <= M_i, so
        # 8 eps M_i more. Summing n = 9 terms in either order adds <= n eps sum(KL_i) on each side.
        r = (scale_q / scale_p).square()
        t = ((loc_q - loc_p) / scale_p).square()
        m_abs = (r + t + 1 + r.log().abs()).sum()
        n = loc_q.numel()
        bound = float(16 * EPS64 * m_abs + 2 * n * EPS64 * ref)
    assert kl.dtype == torch.float64 and n == 9
    assert float(ref) > 1.0  # a real quantity, not the trivial 0 at the prior
    assert abs(float(kl) - float(ref)) <= bound, (float(kl), float(ref), bound)


def test_elbo_doubling_n_data_halves_the_kl_term() -> None:
    model = _perturb(_models()["mlp-lr"])
    zero = torch.zeros(())
    with torch.no_grad():
        term_n = elbo(model, zero, 500, kl_weight=2.0)
        term_2n = elbo(model, zero, 1000, kl_weight=2.0)
    assert float(term_n) > 0
    # With nll = 0 the result is w KL / n; dividing by 2n instead of n is exactly a halving in binary floating point
    # (the correctly rounded x / (2n) is the correctly rounded x / n times 2^-1, no underflow here).
    assert torch.equal(term_2n, term_n / 2)


def test_elbo_with_zero_kl_weight_is_nll_exactly() -> None:
    model = _perturb(_models()["sequential"])
    nll = torch.tensor(1.234567)
    for w in (0, 0.0):
        assert torch.equal(elbo(model, nll, 10, kl_weight=w), nll)


def test_elbo_gradient_reaches_mu_rho_and_nll() -> None:
    model = _perturb(_models()["mlp-bbb"], seed=3)
    layers = _posterior_layers(model)
    params = [p for layer in layers for p in (layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho)
              if p is not None]
    nll = torch.tensor(0.5, requires_grad=True)
    n_data, w = 64, 0.7
    got = torch.autograd.grad(elbo(model, nll, n_data, kl_weight=w), [nll, *params])
    kl = sum((layer.KL()[0] for layer in layers), torch.zeros(()))
    want = torch.autograd.grad(w * kl / n_data, params)
    assert float(got[0]) == 1.0  # d loss / d nll
    for g, h in zip(got[1:], want, strict=True):
        assert bool(g.abs().sum() > 0)
        # the same KL graph, summed in at most another order: a few float32 roundings of each gradient element
        torch.testing.assert_close(g, h, rtol=8 * EPS32, atol=8 * EPS32 * float(h.abs().max()))


def _bad_elbo_cases() -> list[Any]:
    ok_model = _models()["mlp-lr"]
    nll = torch.tensor(0.1)
    cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
        ("model-not-module", {"model": "net"}, TypeError, r"^elbo: model must be an nn\.Module, got str$"),
        ("nll-float", {"nll": 0.1}, TypeError,
         r"^elbo: nll must be a real floating-point tensor \(the batch's mean NLL\), got float$"),
        ("nll-int", {"nll": torch.tensor(1)}, TypeError,
         r"^elbo: nll must be a real floating-point tensor \(the batch's mean NLL\), got a tensor of dtype "
         r"torch\.int64$"),
        ("nll-complex", {"nll": torch.tensor(1 + 1j)}, TypeError,
         r"^elbo: nll must be a real floating-point tensor"),
        ("nll-vector", {"nll": torch.zeros(3)}, ValueError, r"^elbo: nll must be a 0-d tensor .*got shape \(3,\)"),
        ("nll-one-element", {"nll": torch.zeros(1)}, ValueError, r"^elbo: nll must be a 0-d tensor"),
        ("n-bool", {"n_data": True}, TypeError, r"^elbo: n_data must be an int .*got bool$"),
        ("n-float", {"n_data": 100.0}, TypeError, r"^elbo: n_data must be an int .*got float$"),
        ("n-zero", {"n_data": 0}, ValueError, r"^elbo: n_data must be a positive int .*got 0$"),
        ("n-negative", {"n_data": -5}, ValueError, r"^elbo: n_data must be a positive int .*got -5$"),
        ("w-bool", {"kl_weight": True}, TypeError, r"^elbo: kl_weight must be a real number, got bool$"),
        ("w-str", {"kl_weight": "1"}, TypeError, r"^elbo: kl_weight must be a real number, got str$"),
        ("w-tensor", {"kl_weight": torch.tensor(1.0)}, TypeError, r"^elbo: kl_weight must be a real number"),
        ("w-negative", {"kl_weight": -0.1}, ValueError, r"^elbo: kl_weight must be finite and >= 0, got -0\.1$"),
        ("w-inf", {"kl_weight": math.inf}, ValueError, r"^elbo: kl_weight must be finite and >= 0, got inf$"),
        ("w-nan", {"kl_weight": math.nan}, ValueError, r"^elbo: kl_weight must be finite and >= 0, got nan$"),
        ("no-bayes", {"model": nn.Sequential(nn.Linear(2, 2))}, ValueError,
         r"^elbo: model holds no Bayesian linear layer with a posterior \(BBBLinear, LRLinear or CLTLinear; "
         r"CLTLinearDet has none\), so there is no KL term$"),
        ("cltdet-only", {"model": BayesianMLP(2, 1, depth=2, width=3, layer_type="cltdet")}, ValueError,
         r"^elbo: model holds no Bayesian linear layer with a posterior"),
    ]
    out = []
    for cid, change, exc, pattern in cases:
        kwargs = {"model": ok_model, "nll": nll, "n_data": 10, "kl_weight": 1.0, **change}
        out.append(pytest.param(kwargs, exc, pattern, id=cid))
    return out


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), _bad_elbo_cases())
def test_elbo_rejects_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        elbo(**kwargs)


# ---- predictive ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type", ["bbb", "lr"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3)])
def test_predictive_shapes_follow_the_output(layer_type: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = BayesianMLP(3, 2, depth=2, width=4, layer_type=layer_type)  # type: ignore[arg-type]
    x = torch.randn(shape)
    mean, var = predictive(net, x, samples=3)
    out = net(x)
    assert isinstance(out, torch.Tensor)
    assert mean.shape == out.shape and var.shape == out.shape
    assert bool((var >= 0).all())


def _sampling_models() -> list[Any]:
    return [
        pytest.param(lambda: BBBLinear(3, 4, dtype=torch.float64), id="bbb"),
        pytest.param(lambda: LRLinear(3, 4, dtype=torch.float64), id="lr"),
        pytest.param(lambda: BayesianMLP(3, 2, depth=3, width=5, layer_type="lr", dtype=torch.float64), id="mlp-lr"),
    ]


def _check_moments(mean: torch.Tensor, var: torch.Tensor, draws: torch.Tensor) -> None:
    s = draws.shape[0]
    # float64 sample statistics of the same S draws: any summation order is within S eps of sum |x| for the mean
    # and of sum (x - m)^2 plus the mean's error for the variance; bound both by 4 S eps times the largest scale.
    scale = float(draws.detach().abs().max())
    torch.testing.assert_close(mean, draws.mean(0), rtol=0.0, atol=4 * s * EPS64 * scale)
    torch.testing.assert_close(var, draws.var(0, correction=1), rtol=0.0, atol=4 * s * EPS64 * scale**2)


@pytest.mark.parametrize("make", _sampling_models())
def test_predictive_is_the_sample_mean_and_unbiased_variance(make: Any) -> None:
    torch.manual_seed(2)
    model = _perturb(make(), seed=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    samples = 7
    torch.manual_seed(123)
    mean, var = predictive(model, x, samples=samples)
    torch.manual_seed(123)
    draws = torch.stack([model(x) for _ in range(samples)])
    _check_moments(mean, var, draws)
    assert bool((var >= 0).all()) and bool((var > 0).any())


@pytest.mark.parametrize("make", _sampling_models())
def test_predictive_samples_fresh_noise_under_manual_reset_and_map(make: Any) -> None:
    """A model left in MAP mode or with noise held by manual_reset still gives the posterior predictive."""
    torch.manual_seed(3)
    model = _perturb(make(), seed=3)
    twin = copy.deepcopy(model)  # default state: sampling, fresh noise on every call
    x = torch.randn(6, 3, dtype=torch.float64)
    layers = [m for m in model.modules() if isinstance(m, BayesianLinear)]
    for i, layer in enumerate(layers):
        layer.set_manual_reset(True)
        if i == 0:
            layer(x)  # the first layer holds stored noise from a call
        layer.map(i % 2 == 1)
    torch.manual_seed(7)
    mean, var = predictive(model, x, samples=5)
    torch.manual_seed(7)
    draws = torch.stack([twin(x) for _ in range(5)])
    _check_moments(mean, var, draws)
    assert bool((var > 0).all())


def test_predictive_respects_the_grad_mode() -> None:
    torch.manual_seed(4)
    layer = LRLinear(3, 2)
    x = torch.randn(4, 3)
    mean, var = predictive(layer, x, samples=4)
    assert mean.requires_grad and var.requires_grad
    assert layer.weight_rho is not None
    (g,) = torch.autograd.grad(var.sum(), [layer.weight_rho])
    assert bool(g.abs().sum() > 0)
    with torch.no_grad():
        mean, var = predictive(layer, x, samples=4)
    assert not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize("samples", [2, 9])
def test_predictive_of_a_clt_mlp_is_its_closed_form(samples: int) -> None:
    torch.manual_seed(5)
    net = _perturb(BayesianMLP(3, 2, depth=3, width=5, layer_type="clt"), seed=5)
    x = torch.randn(4, 3)
    m_ref, v_ref = net(x)
    assert isinstance(m_ref, torch.Tensor) and isinstance(v_ref, torch.Tensor)
    mean, var = predictive(net, x, samples=samples)
    assert torch.equal(mean, m_ref) and torch.equal(var, v_ref)  # deterministic: one and the same computation
    net.map(True)  # MAP mode would give var None: predictive still gives the posterior's moments
    mean, var = predictive(net, x, samples=samples)
    assert torch.equal(mean, m_ref) and torch.equal(var, v_ref)
    assert all(layer._map for layer in net.bayesian_layers())


def test_predictive_of_a_cltdet_mlp_has_zero_variance() -> None:
    torch.manual_seed(6)
    net = BayesianMLP(3, 2, depth=2, width=4, layer_type="cltdet")
    x = torch.randn(4, 3)
    m_ref, v_ref = net(x)
    assert v_ref is None  # deterministic weights and input: a deterministic output
    mean, var = predictive(net, x)
    assert torch.equal(mean, m_ref)
    assert torch.equal(var, torch.zeros_like(m_ref))


class _Boom(nn.Module):
    """Calls its Bayesian layers, records the state they ran in, then raises."""

    def __init__(self) -> None:
        super().__init__()
        self.a = BBBLinear(3, 3, manual_reset=True)
        self.b = LRLinear(3, 2)
        self.seen: list[tuple[bool, bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.b(self.a(x))
        self.seen.append((self.a._map, self.a.get_manual_reset(), self.b._map, self.b.get_manual_reset()))
        raise RuntimeError("boom")


def _state(model: nn.Module) -> list[tuple[bool, bool, Any, Any]]:
    return [(m._map, m.get_manual_reset(), m._random_weight, m._random_bias)
            for m in model.modules() if isinstance(m, BayesianLinear)]


def _same_state(before: list[tuple[bool, bool, Any, Any]], after: list[tuple[bool, bool, Any, Any]]) -> bool:
    return all(b[:2] == a[:2] and b[2] is a[2] and b[3] is a[3] for b, a in zip(before, after, strict=True))


def test_predictive_restores_map_manual_reset_and_noise() -> None:
    torch.manual_seed(8)
    net = BayesianMLP(3, 2, depth=3, width=4, layer_type="bbb")
    x = torch.randn(5, 3)
    net.set_manual_reset(True)
    net(x)  # every layer now holds stored noise
    net.bayesian_layers()[1].map(True)
    before = _state(net)
    assert before[0][2] is not None and before[1][0]
    predictive(net, x, samples=3)
    assert _same_state(before, _state(net))


def test_predictive_restores_state_when_the_model_raises() -> None:
    torch.manual_seed(9)
    model = _Boom()
    x = torch.randn(2, 3)
    model.a(x)  # stored noise
    model.b.map(True)
    before = _state(model)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        predictive(model, x, samples=4)
    assert model.seen == [(False, False, False, False)]  # the call ran sampling with fresh noise
    assert _same_state(before, _state(model))


def test_predictive_restores_a_clt_mlp_when_it_raises() -> None:
    net = BayesianMLP(3, 2, depth=2, width=4, layer_type="clt")
    net.map(True)
    before = _state(net)
    with pytest.raises(RuntimeError):
        predictive(net, torch.randn(2, 5))  # wrong feature size: F.linear raises inside
    assert _same_state(before, _state(net))


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = BBBLinear(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y: torch.Tensor = self.layer(x)
        return y, y


@pytest.mark.parametrize(("model", "samples", "exc", "pattern"), [
    pytest.param(BBBLinear(2, 2), 1, ValueError, r"^predictive: samples must be an int >= 2 .*got 1$", id="s1"),
    pytest.param(BBBLinear(2, 2), 0, ValueError, r"^predictive: samples must be an int >= 2 .*got 0$", id="s0"),
    pytest.param(BBBLinear(2, 2), True, ValueError, r"^predictive: samples must be an int >= 2 .*got True$",
                 id="s-bool"),
    pytest.param(BBBLinear(2, 2), 4.0, ValueError, r"^predictive: samples must be an int >= 2 .*got 4\.0$",
                 id="s-float"),
    pytest.param(nn.Linear(2, 2), 4, ValueError, r"^predictive: model holds no Bayesian linear layer \(BBBLinear, "
                 r"LRLinear, CLTLinear or CLTLinearDet\), so it has no predictive distribution$", id="plain"),
    pytest.param("net", 4, TypeError, r"^predictive: model must be an nn\.Module, got str$", id="not-module"),
    pytest.param(nn.Sequential(CLTLinear(2, 2, is_input=True, is_output=True)), 4, ValueError,
                 r"^predictive: CLT layers give moments, not samples, and only a BayesianMLP with layer_type 'clt' "
                 r"or 'cltdet' passes them from layer to layer; pass that BayesianMLP itself, or use "
                 r"BBBLinear/LRLinear layers$", id="clt-outside-mlp"),
    pytest.param(_Pair(), 4, TypeError, r"^predictive: the model returned tuple; sampling needs a model that "
                 r"returns one tensor per call$", id="tuple-output"),
])
def test_predictive_rejects_bad_arguments(model: Any, samples: Any, exc: type[Exception], pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        predictive(model, torch.randn(3, 2), samples=samples)


# ---- docs ---------------------------------------------------------------------------------------------------


def test_docstring_examples_run() -> None:
    result = doctest.testmod(train_mod, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_bayesian_linear_page_example_runs() -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "bayesian-linear.md"
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
              if "elbo(" in b]
    assert len(blocks) == 1
    torch.manual_seed(0)
    ns: dict[str, Any] = {"__name__": "bayesian_linear_example"}
    exec(compile(blocks[0], str(page), "exec"), ns)
    assert bool(torch.isfinite(ns["loss"])) and ns["mean"].shape == ns["var"].shape == (256, 1)
    assert bool((ns["var"] > 0).all())


def test_sampling_block_samples_and_restores_the_layer() -> None:
    """BayesianLinear.sampling(): inside, MAP mode and manual_reset are off (two calls differ); after it, also after a
    raise, the mode, manual_reset and the stored noise are as before (the next call repeats the stored draw)."""
    torch.manual_seed(0)
    layer = LRLinear(3, 2)
    x = torch.randn(4, 3)
    layer.set_manual_reset(True)
    first = layer(x)  # draws and stores the noise
    layer.map(True)
    with layer.sampling():
        assert not layer.get_manual_reset()
        assert not torch.equal(layer(x), layer(x))
    assert layer.get_manual_reset()
    assert torch.equal(layer(x), layer(x)) and not torch.equal(layer(x), first)  # MAP again: the means only
    layer.map(False)
    assert torch.equal(layer(x), first)  # the stored noise is back
    with pytest.raises(RuntimeError, match=r"^inside$"), layer.sampling():
        raise RuntimeError("inside")
    assert layer.get_manual_reset() and torch.equal(layer(x), first)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = LRLinear(2, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y: torch.Tensor = self.layer(x)
        return y


def test_predictive_draws_sixteen_samples_by_default() -> None:
    net = _Counting()
    predictive(net, torch.randn(3, 2))
    assert net.calls == 16


def test_predictive_sees_through_torch_compile() -> None:
    """A compiled CLT BayesianMLP is still the closed form: the wrapper's _orig_mod is the BayesianMLP. A compiled
    model whose original is not a BayesianMLP, with CLT layers inside, is refused as the original would be."""
    net = BayesianMLP(3, 2, depth=2, width=4, layer_type="clt")
    wrapped = torch.compile(net, backend="eager")
    x = torch.randn(5, 3)
    mean, var = predictive(wrapped, x)
    want = wrapped(x)  # the compiled call itself (compile runs the plain forms, eager the fused node)
    assert torch.equal(mean, want[0]) and want[1] is not None and torch.equal(var, want[1])
    seq = torch.compile(nn.Sequential(CLTLinear(3, 2, is_input=True, is_output=True)), backend="eager")
    with pytest.raises(ValueError, match=r"^predictive: CLT layers give moments, not samples"):
        predictive(seq, x)
