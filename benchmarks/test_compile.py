"""torch.compile against eager: one SGD training step of the same model, per R-LayerNorm layer.

Per layer, one group holds two benchmarks of the same step (zero_grad, forward, cross-entropy, backward, SGD
step) on the same inputs: ``eager`` (the baseline) runs the model as it is; the contender, named after the layer,
runs ``torch.compile(model, fullgraph=True)`` (default backend, inductor). Only the model is compiled; the loss,
``backward()`` and the optimizer step are the same eager calls on both sides, as in a usual training loop. The
gated ratio is ``compile.step:<Layer>/eager`` = compiled median / eager median.

Each model is compiled once per session (``pairs``, ``_pair``) and warmed up there, so compilation never lands
in a timed round. The timed rounds run under ``error_on_recompile``: a guard failure that would recompile during
timing fails the benchmark instead of timing the compiler.

Models: the small CNN of ``test_cnn.py`` (``models.small_cnn``) on (32, 3, 32, 32) for the 2d layers, and a
two-block residual MLP over the last dim (``_mlp``) on (32, 64, 128) for the last-dims layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch._dynamo.config as dynamo_config
import torch.nn.functional as F
from torch import nn

from benchmarks.conftest import NORM_MODULES, record, require
from benchmarks.models import small_cnn

CNN_BATCH = (32, 3, 32, 32)
MLP_BATCH = (32, 64, 128)  # (batch, tokens, features)
N_CLASSES = 10


class _ResidualMLP(nn.Module):
    """Two pre-norm residual blocks ``x + W2 gelu(W1 norm(x))`` (hidden 2 * width), a final norm, the mean over
    tokens and a linear head: the normalization pattern of a transformer block without the attention."""

    def __init__(self, norm: Callable[[int], nn.Module], width: int, n_classes: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(norm(width) for _ in range(2))
        self.up = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(2))
        self.down = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(2))
        self.final = norm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, up, down in zip(self.norms, self.up, self.down, strict=True):
            x = x + down(F.gelu(up(norm(x))))
        return self.head(self.final(x).mean(dim=1))


def _mlp(norm: Callable[[int], nn.Module]) -> nn.Module:
    return _ResidualMLP(norm, MLP_BATCH[2], N_CLASSES)


@dataclass(frozen=True)
class _Case:
    build: Callable[[Callable[[int], nn.Module]], nn.Module]
    batch: tuple[int, ...]


CASES = {
    "RLayerNorm2d": _Case(small_cnn, CNN_BATCH),
    "BayesianRLayerNorm2d": _Case(small_cnn, CNN_BATCH),
    "RLayerNorm": _Case(_mlp, MLP_BATCH),
    "BayesianRLayerNorm": _Case(_mlp, MLP_BATCH),
}
WARMUP_STEPS = 3  # the first compiles forward and backward; any recompile must happen here, not in timed rounds


@dataclass
class _Pair:
    eager: Callable[[], None]
    compiled: Callable[[], None]
    params: int
    fused_calls: dict[str, int]  # calls of the fused R-LayerNorm ops in one compiled step, for the record


def _fused_calls(step: Callable[[], None]) -> dict[str, int]:
    """How often one ``step()`` calls each ``rln_verified::`` operator (the fused kernel kept under compile)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("rln_verified::")}


def _stepper(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    return step


@pytest.fixture(scope="session")
def pairs() -> dict[str, _Pair]:
    """Built on first use per layer (``_pair``), then kept for the later windows. Session scope: conftest.py runs
    the windows as passes over all files, so a module-scoped fixture would be torn down and rebuilt (recompiled)
    between this file's windows."""
    return {}


def _pair(pairs: dict[str, _Pair], layer: str) -> _Pair:
    if layer in pairs:
        return pairs[layer]
    case = CASES[layer]
    cls = require(layer, *NORM_MODULES)
    torch.manual_seed(0)
    model = case.build(cls)
    # Two copies with the same initial parameters, each with its own optimizer: the compiled one wraps its copy.
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    x = torch.randn(*case.batch)
    target = torch.randint(0, N_CLASSES, (case.batch[0],))
    eager_step, compiled_step = _stepper(model, x, target), _stepper(compiled, x, target)
    for _ in range(WARMUP_STEPS):
        compiled_step()
        eager_step()
    pair = _Pair(eager_step, compiled_step, sum(p.numel() for p in model.parameters()), _fused_calls(compiled_step))
    pairs[layer] = pair
    return pair


# Decorator order makes the side vary fastest, so a group's two members run back to back in each window.
@pytest.mark.parametrize("side", ["eager", "compiled"])
@pytest.mark.parametrize("layer", list(CASES))
def test_compile_step(benchmark: Any, pairs: dict[str, _Pair], layer: str, side: str) -> None:
    pair = _pair(pairs, layer)
    batch = CASES[layer].batch
    benchmark.group = f"compile.step {layer} {'x'.join(map(str, batch))}"
    name, vs = (layer, ["eager"]) if side == "compiled" else ("eager", [])
    extra: dict[str, object] = {"fused_calls": pair.fused_calls} if side == "compiled" else {}
    record(benchmark, "compile.step", name, vs, batch, params=pair.params, layer=layer, side=side,
           compile="torch.compile(model, fullgraph=True)", **extra)
    step = pair.compiled if side == "compiled" else pair.eager
    with dynamo_config.patch(error_on_recompile=True):
        benchmark(step)
