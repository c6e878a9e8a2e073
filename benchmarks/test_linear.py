"""Bayesian linear layers at 256x512 -> 512, forward plus backward, against nn.Linear (+ReLU for the CLT
layers, whose moments include the activation) and against naive same-math versions (``benchmarks.naive``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import naive
from benchmarks.conftest import LINEAR_MODULES, record, require

BATCH, N_IN, N_OUT = 256, 512, 512
SHAPE = f"{BATCH}x{N_IN}->{N_OUT}"
KIND = "linear.fwd_bwd"


def _posterior_of(layer: nn.Module) -> naive.Posterior:
    """The naive baseline gets tensors of the contender's shapes (fresh leaves, same values)."""
    def leaf(name: str) -> torch.Tensor:
        return getattr(layer, name).detach().clone().requires_grad_(True)

    return naive.Posterior(leaf("weight_mu"), leaf("weight_rho"), leaf("bias_mu"), leaf("bias_rho"))


def _bench(benchmark: Any, name: str, vs: list[str], fn: Callable[[], None]) -> None:
    benchmark.group = f"{KIND} {SHAPE}"
    record(benchmark, KIND, name, vs, SHAPE)
    benchmark(fn)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(BATCH, N_IN, requires_grad=True)


@pytest.fixture
def var_h() -> torch.Tensor:
    return torch.rand(BATCH, N_IN, requires_grad=True)


@pytest.fixture
def g() -> torch.Tensor:
    return torch.randn(BATCH, N_OUT)


def test_linear(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    lin = nn.Linear(N_IN, N_OUT)
    _bench(benchmark, "Linear", [], lambda: lin(x).backward(g))


def test_linear_relu(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    lin = nn.Linear(N_IN, N_OUT)
    _bench(benchmark, "LinearReLU", [], lambda: F.relu(lin(x)).backward(g))


def test_bbb(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    layer = require("BBBLinear", *LINEAR_MODULES)(N_IN, N_OUT)
    _bench(benchmark, "BBBLinear", ["Linear", "NaiveBBB"], lambda: layer(x).backward(g))


def test_naive_bbb(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    p = naive.Posterior.random(N_IN, N_OUT)
    _bench(benchmark, "NaiveBBB", ["Linear"], lambda: naive.bbb_forward(p, x).backward(g))


def test_lr(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    layer = require("LRLinear", *LINEAR_MODULES)(N_IN, N_OUT)
    _bench(benchmark, "LRLinear", ["Linear", "NaiveLR"], lambda: layer(x).backward(g))


def test_naive_lr(benchmark: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    p = naive.Posterior.random(N_IN, N_OUT)
    _bench(benchmark, "NaiveLR", ["Linear"], lambda: naive.lr_forward(p, x).backward(g))


def _moments_backward(out: tuple[torch.Tensor, torch.Tensor | None], g: torch.Tensor) -> None:
    mean, var = out
    assert var is not None
    torch.autograd.backward([mean, var], [g, g.abs()])


def test_clt(benchmark: Any, x: torch.Tensor, var_h: torch.Tensor, g: torch.Tensor) -> None:
    layer = require("CLTLinear", *LINEAR_MODULES)(N_IN, N_OUT, act="relu", is_input=False, is_output=False)
    _bench(benchmark, "CLTLinear", ["LinearReLU", "NaiveCLT"], lambda: _moments_backward(layer(x, var_h), g))


def test_naive_clt(benchmark: Any, x: torch.Tensor, var_h: torch.Tensor, g: torch.Tensor) -> None:
    p = naive.Posterior.random(N_IN, N_OUT)
    _bench(benchmark, "NaiveCLT", ["LinearReLU"], lambda: _moments_backward(naive.clt_forward(p, x, var_h), g))


def test_clt_det(benchmark: Any, x: torch.Tensor, var_h: torch.Tensor, g: torch.Tensor) -> None:
    layer = require("CLTLinearDet", *LINEAR_MODULES)(N_IN, N_OUT, act="relu", is_input=False, is_output=False)
    _bench(benchmark, "CLTLinearDet", ["LinearReLU", "NaiveCLTDet"], lambda: _moments_backward(layer(x, var_h), g))


def test_naive_clt_det(benchmark: Any, x: torch.Tensor, var_h: torch.Tensor, g: torch.Tensor) -> None:
    p = naive.Posterior.random(N_IN, N_OUT)
    w, b = p.weight_mu, p.bias_mu
    _bench(
        benchmark, "NaiveCLTDet", ["LinearReLU"], lambda: _moments_backward(naive.clt_det_forward(w, b, x, var_h), g)
    )


# KL() forward plus backward of a 512x512 layer against the textbook closed form on the same tensors (the layer's
# parameters, sigma = exp(rho), the prior): log(sp/sq) + (sq^2 + (mq - mp)^2)/(2 sp^2) - 1/2, summed.
KL_SHAPE = f"{N_OUT}x{N_IN}"
KL_KIND = "linear.kl_fwd_bwd"


def _bench_kl(benchmark: Any, name: str, vs: list[str], fn: Callable[[], None]) -> None:
    benchmark.group = f"{KL_KIND} {KL_SHAPE}"
    record(benchmark, KL_KIND, name, vs, KL_SHAPE)
    benchmark(fn)


def test_kl(benchmark: Any) -> None:
    layer = require("BBBLinear", *LINEAR_MODULES)(N_IN, N_OUT)
    _bench_kl(benchmark, "KL", ["KLTextbook"], lambda: layer.KL()[0].backward())


def test_kl_textbook(benchmark: Any) -> None:
    layer = require("BBBLinear", *LINEAR_MODULES)(N_IN, N_OUT)

    def textbook() -> None:
        kl = torch.zeros(())
        for mq, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            sq = torch.exp(rho)
            mp, sp = layer.prior_mean.expand_as(mq), layer.prior_std.expand_as(mq)
            kl = kl + (torch.log(sp / sq) + (sq.square() + (mq - mp).square()) / (2 * sp.square()) - 0.5).sum()
        kl.backward()

    _bench_kl(benchmark, "KLTextbook", [], textbook)
