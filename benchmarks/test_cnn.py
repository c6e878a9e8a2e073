"""Model level: one SGD step (forward, backward, step) of the seed's small CNN, per norm layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.conftest import NORM_MODULES, names, record, require
from benchmarks.models import small_cnn
from rln_verified.seed import SeedBayesianRLayerNorm2d

BATCH = (32, 3, 32, 32)

_NORMS: dict[str, tuple[Callable[[int], nn.Module], list[str]]] = {
    "GroupNorm": (lambda c: nn.GroupNorm(c, c), []),
    "RLayerNorm2d": (lambda c: require("RLayerNorm2d", *NORM_MODULES)(c), ["GroupNorm"]),
    "BayesianRLayerNorm2d": (
        lambda c: require("BayesianRLayerNorm2d", *NORM_MODULES)(c),
        ["GroupNorm", "SeedBayesianRLayerNorm2d"],
    ),
    "SeedBayesianRLayerNorm2d": (SeedBayesianRLayerNorm2d, ["GroupNorm"]),
}


@pytest.mark.parametrize("name", names(list(_NORMS)))
def test_cnn_step(benchmark: Any, name: str) -> None:
    norm, vs = _NORMS[name]
    model = small_cnn(norm)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(*BATCH)
    target = torch.randint(0, 10, (BATCH[0],))
    benchmark.group = "cnn.step 32x3x32x32"
    record(benchmark, "cnn.step", name, vs, BATCH, params=sum(p.numel() for p in model.parameters()))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    benchmark(step)
