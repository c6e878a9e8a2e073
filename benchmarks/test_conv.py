"""Bayesian conv layers, forward plus backward, 3x3 kernels with padding 1, against the naive same math
(``benchmarks.naive``) and against ``nn.Conv2d``.

Shapes: (32, 16, 32, 32) -> 32 channels, a small-channel CIFAR-like layer, and (8, 64, 28, 28) -> 64, a
convolution-bound one. (8, 64, 56, 56) costs four times as much per call for ratios within about 10% (a direct
timing, against nn.Conv2d: BBB 1.0, LR 2.3, CLT 3.7 there; 1.0 - 1.1, 2.2, 3.5 at 28x28), so the smaller plane keeps
the quick gate short. Against ``nn.Conv2d`` the ratios are reported and guarded, not held to
1: LR runs a second convolution (of x^2 with sigma^2), CLT three (mean, sigma^2 and mu^2 terms), and BBB samples
the kernel and backpropagates through rho (docs/performance.md, "Bayesian convolutions").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks import naive
from benchmarks.conftest import record, require

KIND = "conv.fwd_bwd"
CONV_MODULES = ("rln_verified._bayesian_conv", "rln_verified")
# (N, C_in, H, W), C_out; kernel 3, padding 1, stride 1, so the output is (N, C_out, H, W).
SHAPES = [((32, 16, 32, 32), 32), ((8, 64, 28, 28), 64)]
IDS = ["32x16x32x32-32", "8x64x28x28-64"]
KERNEL, PAD = 3, 1


def _label(shape: tuple[tuple[int, int, int, int], int]) -> str:
    (n, c, h, w), out = shape
    return f"({n},{c},{h},{w})->{out} k{KERNEL}p{PAD}"


def _bench(benchmark: Any, shape: tuple[tuple[int, int, int, int], int], name: str, vs: list[str],
           fn: Callable[[], None]) -> None:
    benchmark.group = f"{KIND} {_label(shape)}"
    record(benchmark, KIND, name, vs, _label(shape))
    benchmark(fn)


def _posterior_of(layer: nn.Module) -> naive.Posterior:
    """The naive baseline gets tensors of the contender's shapes and values (fresh leaves)."""
    def leaf(name: str) -> torch.Tensor:
        t: torch.Tensor = getattr(layer, name)
        return t.detach().clone().requires_grad_(True)

    return naive.Posterior(leaf("weight_mu"), leaf("weight_rho"), leaf("bias_mu"), leaf("bias_rho"))


@pytest.fixture(params=SHAPES, ids=IDS)
def shape(request: pytest.FixtureRequest) -> tuple[tuple[int, int, int, int], int]:
    s: tuple[tuple[int, int, int, int], int] = request.param
    return s


@pytest.fixture
def x(shape: tuple[tuple[int, int, int, int], int]) -> torch.Tensor:
    return torch.randn(*shape[0], requires_grad=True)


@pytest.fixture
def g(shape: tuple[tuple[int, int, int, int], int]) -> torch.Tensor:
    (n, _, h, w), out = shape
    return torch.randn(n, out, h, w)


def _layer(cls_name: str, shape: tuple[tuple[int, int, int, int], int], **kw: Any) -> Any:
    return require(cls_name, *CONV_MODULES)(shape[0][1], shape[1], KERNEL, padding=PAD, **kw)


def test_conv2d(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    conv = nn.Conv2d(shape[0][1], shape[1], KERNEL, padding=PAD)
    _bench(benchmark, shape, "Conv2d", [], lambda: conv(x).backward(g))


def test_bbb(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    layer = _layer("BBBConv2d", shape)
    _bench(benchmark, shape, "BBBConv2d", ["Conv2d", "NaiveBBBConv"], lambda: layer(x).backward(g))


def test_naive_bbb(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    p = _posterior_of(_layer("BBBConv2d", shape))
    _bench(benchmark, shape, "NaiveBBBConv", ["Conv2d"], lambda: naive.bbb_conv_forward(p, x, PAD).backward(g))


def test_lr(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    layer = _layer("LRConv2d", shape)
    _bench(benchmark, shape, "LRConv2d", ["Conv2d", "NaiveLRConv"], lambda: layer(x).backward(g))


def test_naive_lr(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    p = _posterior_of(_layer("LRConv2d", shape))
    _bench(benchmark, shape, "NaiveLRConv", ["Conv2d"], lambda: naive.lr_conv_forward(p, x, PAD).backward(g))


def test_clt(benchmark: Any, shape: Any, x: torch.Tensor, g: torch.Tensor) -> None:
    # A hidden layer: input moments (x, var_h), ReLU moments out; backward through both outputs.
    layer = _layer("CLTConv2d", shape, act="relu", is_input=False, is_output=False)
    var_h = torch.rand(*shape[0], requires_grad=True)

    def step() -> None:
        mean, var = layer(x, var_h)
        torch.autograd.backward([mean, var], [g, g.abs()])

    _bench(benchmark, shape, "CLTConv2d", ["Conv2d"], step)
