"""Norm layers against their fused baselines: nn.GroupNorm(C, C) for 2d, nn.LayerNorm for the last dims.

Per shape, one group for inference forward (``no_grad``) and one for forward plus backward. The seed-style
eager reference (``rln_verified.seed``) is timed alongside, so ours/seed is on record. Forward plus
backward benchmarks also record the exact bytes saved for backward (input included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks.conftest import NORM_MODULES, names, record, require
from rln_verified.bench import saved_bytes
from rln_verified.seed import SeedBayesianRLayerNorm, SeedBayesianRLayerNorm2d, SeedRLayerNorm2d

SHAPES_2D = [(32, 16, 32, 32), (32, 64, 8, 8), (8, 128, 56, 56)]
SHAPES_LAST = [(32, 128, 256), (8, 512, 768)]

# name -> (factory(C or normalized_shape), baselines)
_2D: dict[str, tuple[Callable[[int], nn.Module], list[str]]] = {
    "GroupNorm": (lambda c: nn.GroupNorm(c, c), []),
    "RLayerNorm2d": (lambda c: require("RLayerNorm2d", *NORM_MODULES)(c), ["GroupNorm", "SeedRLayerNorm2d"]),
    "BayesianRLayerNorm2d": (
        lambda c: require("BayesianRLayerNorm2d", *NORM_MODULES)(c),
        ["GroupNorm", "SeedBayesianRLayerNorm2d"],
    ),
    "SeedRLayerNorm2d": (SeedRLayerNorm2d, ["GroupNorm"]),
    "SeedBayesianRLayerNorm2d": (SeedBayesianRLayerNorm2d, ["GroupNorm"]),
}
_LAST: dict[str, tuple[Callable[[int], nn.Module], list[str]]] = {
    "LayerNorm": (nn.LayerNorm, []),
    "RLayerNorm": (lambda n: require("RLayerNorm", *NORM_MODULES)(n), ["LayerNorm"]),
    "BayesianRLayerNorm": (
        lambda n: require("BayesianRLayerNorm", *NORM_MODULES)(n),
        ["LayerNorm", "SeedBayesianRLayerNorm"],
    ),
    "SeedBayesianRLayerNorm": (SeedBayesianRLayerNorm, ["LayerNorm"]),
}


def _shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _run(benchmark: Any, kind: str, name: str, vs: list[str], layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    record(benchmark, kind, name, vs, shape)
    if kind.endswith(".fwd"):
        layer.eval()

        def fwd() -> None:
            with torch.no_grad():
                layer(x)

        benchmark(fwd)
        return
    x.requires_grad_(True)
    grad = torch.randn(*shape)
    benchmark.extra_info["saved_bytes"] = saved_bytes(layer, x)
    benchmark.extra_info["input_bytes"] = x.numel() * x.element_size()

    def fwd_bwd() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    benchmark(fwd_bwd)


# Decorator order makes the name vary fastest, so a group's members run back to back (less drift between them).
@pytest.mark.parametrize("name", names(list(_2D)))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES_2D, ids=_shape_id)
def test_norm2d(benchmark: Any, name: str, shape: tuple[int, int, int, int], mode: str) -> None:
    factory, vs = _2D[name]
    kind = f"norm2d.{mode}"
    benchmark.group = f"{kind} {_shape_id(shape)}"
    _run(benchmark, kind, name, vs, factory(shape[1]), shape)


@pytest.mark.parametrize("name", names(list(_LAST)))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES_LAST, ids=_shape_id)
def test_norm_last(benchmark: Any, name: str, shape: tuple[int, int, int], mode: str) -> None:
    factory, vs = _LAST[name]
    kind = f"normlast.{mode}"
    benchmark.group = f"{kind} {_shape_id(shape)}"
    _run(benchmark, kind, name, vs, factory(shape[-1]), shape)
