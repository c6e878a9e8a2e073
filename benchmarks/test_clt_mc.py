"""CLT predictive moments against Monte Carlo at equal moment error, for a 3-layer BayesianMLP.

1. A reference: Monte Carlo with ``S_REF`` whole-network weight samples (float64 accumulation).
2. The CLT error: ``err(m, v) = max(rms((m - m_ref) / sqrt(v_ref)), rms(v / v_ref - 1))`` over batch and outputs,
   the mean error in units of the predictive std and the variance error relative.
3. ``S``: the smallest power of two for which the median (over ``SEEDS`` seeds) Monte Carlo error is at most
   the CLT error. A first guess uses err ~ 1/sqrt(S); the search then doubles until it holds.
4. Time the CLT forward and Monte Carlo with ``S`` samples, both under ``no_grad``.

The posterior std is set to ``POST_STD`` for every weight and bias (the default init, 0.01, makes the
network nearly deterministic, where the CLT is almost exact and the comparison says little).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from benchmarks import naive
from benchmarks.conftest import LINEAR_MODULES, record, require

DIM_IN, DIM_OUT, DEPTH, WIDTH, BATCH = 8, 2, 3, 32, 64
POST_STD = 0.1
S_REF = 2**16
SEEDS = 5
S_CAP = 2**14
KIND = "clt_vs_mc"
GROUP = f"{KIND} mlp{DIM_IN}-{WIDTH}-{WIDTH}-{DIM_OUT} batch{BATCH}"


def moment_error(m: torch.Tensor, v: torch.Tensor, m_ref: torch.Tensor, v_ref: torch.Tensor) -> float:
    m, v = m.double(), v.double()
    e_mean = ((m - m_ref) / v_ref.sqrt()).pow(2).mean().sqrt()
    e_var = (v / v_ref - 1.0).pow(2).mean().sqrt()
    return float(torch.maximum(e_mean, e_var))


@dataclass
class Setup:
    model: torch.nn.Module
    post: list[naive.Posterior]
    x: torch.Tensor
    clt_err: float
    mc_err: float
    samples: int
    ref_noise: float


def _mc_err(setup_post: list[naive.Posterior], x: torch.Tensor, s: int, m_ref: torch.Tensor,
            v_ref: torch.Tensor) -> float:
    errs = []
    for seed in range(SEEDS):
        gen = torch.Generator().manual_seed(1000 + seed)
        m, v = naive.mc_predictive(setup_post, x, s, generator=gen)
        errs.append(moment_error(m, v, m_ref, v_ref))
    return statistics.median(errs)


@pytest.fixture(scope="session")  # built once, shared by every window
def setup() -> Setup:
    mlp_cls = require("BayesianMLP", *LINEAR_MODULES)
    torch.manual_seed(0)
    model = mlp_cls(DIM_IN, DIM_OUT, DEPTH, WIDTH, layer_type="clt").eval()
    post = []
    with torch.no_grad():
        for layer in model.bayesian_layers():
            rho = math.log(POST_STD)
            if getattr(layer, "use_softplus", False):
                rho = float(layer.inv_softplus(torch.tensor(POST_STD, dtype=torch.float64)))
            layer.weight_rho.fill_(rho)
            layer.bias_rho.fill_(rho)
            w_std, b_std = layer.std()
            post.append(naive.Posterior(layer.weight_mu.detach().clone(), w_std.log().detach(),
                                        layer.bias_mu.detach().clone(), b_std.log().detach()))
    if len(post) != DEPTH:
        raise AssertionError(f"expected {DEPTH} Bayesian layers, found {len(post)}")
    x = torch.randn(BATCH, DIM_IN)
    m_ref, v_ref = naive.mc_predictive(post, x, S_REF, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        m_clt, v_clt = model(x)
    clt_err = moment_error(m_clt, v_clt, m_ref, v_ref)
    s0 = 64
    e0 = _mc_err(post, x, s0, m_ref, v_ref)
    s = max(2, 2 ** math.ceil(math.log2(s0 * (e0 / clt_err) ** 2)))
    s = min(s, S_CAP)
    while True:
        e = _mc_err(post, x, s, m_ref, v_ref)
        if e <= clt_err or s >= S_CAP:
            break
        s *= 2
    return Setup(model, post, x, clt_err, e, s, ref_noise=math.sqrt(2.0 / S_REF))


def _record(benchmark: Any, st: Setup, name: str, vs: list[str]) -> None:
    benchmark.group = GROUP
    record(
        benchmark, KIND, name, vs, f"({BATCH},{DIM_IN}) depth {DEPTH} width {WIDTH}",
        clt_moment_error=st.clt_err, mc_moment_error=st.mc_err, mc_samples=st.samples, ref_samples=S_REF,
        ref_noise=st.ref_noise, posterior_std=POST_STD,
        mc_samples_capped=st.samples >= S_CAP and st.mc_err > st.clt_err,
    )


def test_clt_moments(benchmark: Any, setup: Setup) -> None:
    _record(benchmark, setup, "CLT", ["MC"])

    def clt() -> None:
        with torch.no_grad():
            setup.model(setup.x)

    benchmark(clt)


def test_mc_moments(benchmark: Any, setup: Setup) -> None:
    _record(benchmark, setup, "MC", [])

    def mc() -> None:
        with torch.no_grad():
            naive.mc_predictive(setup.post, setup.x, setup.samples)

    benchmark(mc)
