"""The models of the study: the seed's EfficientCNN with each norm, a 1-D CNN for MNIST-1D, the MLPs, and a
Bayesian CNN (Bayesian convolutions and ``BayesianRLayerNorm2d``).

EfficientCNN (the seed's shape): three blocks ``Conv2d(3x3, padding 1) -> norm -> Tanh -> MaxPool2d(2)`` with
16, 32, 64 channels, then ``Linear(64 * s * s, classes)``; on 8x8 digits the maps are 8x8, 4x4, 2x2 at the norms
and 1x1 after the last pool. Every norm layer gets its default constructor arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rln_verified import (
    BayesianMLP,
    BayesianRLayerNorm,
    BayesianRLayerNorm2d,
    BBBConv2d,
    BBBLinear,
    LRConv2d,
    LRLinear,
    RLayerNorm,
    RLayerNorm2d,
)
from rln_verified.seed import SeedBayesianRLayerNorm2d, SeedRLayerNorm2d

# Image norms: name -> factory(C). "groupnorm1" is LayerNorm for conv maps (one group over (C, H, W));
# "groupnormC" normalizes each channel over (H, W), the grouping of the seed's layers and of ours.
NORMS_2D: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda c: nn.Identity(),
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "groupnorm1": lambda c: nn.GroupNorm(1, c),
    "groupnormC": lambda c: nn.GroupNorm(c, c),
    "rln": lambda c: RLayerNorm2d(c),
    "brln": lambda c: BayesianRLayerNorm2d(c),
    "seed_rln": lambda c: SeedRLayerNorm2d(c),
    "seed_brln": lambda c: SeedBayesianRLayerNorm2d(c),
}
OURS_2D = ("rln", "brln")
BASELINES_2D = ("none", "batchnorm", "groupnorm1", "groupnormC", "seed_rln", "seed_brln")

# Last-dims norms over a 1-D conv map's (C, L).
NORMS_1D: dict[str, Callable[[tuple[int, int]], nn.Module]] = {
    "layernorm": lambda s: nn.LayerNorm(list(s)),
    "rln": lambda s: RLayerNorm(s),
    "brln": lambda s: BayesianRLayerNorm(s),
}
OURS_1D = ("rln", "brln")
BASELINES_1D = ("layernorm",)

MLP_KINDS = ("det", "bbb", "lr", "clt")
BAYES_CNN_KINDS = ("lr", "bbb")  # LRConv2d/LRLinear, BBBConv2d/BBBLinear


class EfficientCNN(nn.Module):
    def __init__(self, norm: str, in_channels: int = 1, classes: int = 10, size: int = 8,
                 channels: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        if norm not in NORMS_2D:
            raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(NORMS_2D)}")
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), NORMS_2D[norm](c), nn.Tanh(), nn.MaxPool2d(2)]
            c_in = c
            size //= 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


class CNN1d(nn.Module):
    """Three ``Conv1d(k=5) -> norm over (C, L) -> ReLU`` blocks (32 channels; strides 1, 2, 2), then a linear head.
    The shape of MNIST-1D's baseline CNN (three conv layers and a linear layer), with a norm in each block."""

    def __init__(self, norm: str, length: int = 40, classes: int = 10, channels: int = 32) -> None:
        super().__init__()
        if norm not in NORMS_1D:
            raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(NORMS_1D)}")
        layers: list[nn.Module] = []
        c_in, n = 1, length
        for stride in (1, 2, 2):
            n = (n + 2 * 2 - 5) // stride + 1
            layers += [nn.Conv1d(c_in, channels, 5, stride=stride, padding=2), NORMS_1D[norm]((channels, n)),
                       nn.ReLU()]
            c_in = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * n, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x.unsqueeze(1)).flatten(1))
        return out


def make_mlp(kind: str, dim_in: int = 40, classes: int = 10, width: int = 100, depth: int = 3) -> nn.Module:
    """``det``: ``nn.Linear``/``ReLU`` MLP; ``bbb``/``lr``/``clt``: ``BayesianMLP`` of the same shape."""
    if kind == "det":
        layers: list[nn.Module] = []
        d = dim_in
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, classes))
        return nn.Sequential(*layers)
    if kind in ("bbb", "lr", "clt"):
        return BayesianMLP(dim_in, classes, depth=depth, width=width, layer_type=kind)  # type: ignore[arg-type]
    raise ValueError(f"unknown MLP kind {kind!r}; expected one of {MLP_KINDS}")


class BayesianCNN(nn.Module):
    """Two ``Bayesian conv(3x3, padding 1) -> BayesianRLayerNorm2d -> ReLU -> MaxPool2d(2)`` blocks (16, 32
    channels) and a Bayesian linear head: ``kind`` "lr" uses ``LRConv2d``/``LRLinear``, "bbb" ``BBBConv2d``/
    ``BBBLinear``. On 8x8 digits the maps are 8x8 and 4x4 at the norms, 2x2 before the head."""

    def __init__(self, kind: str = "lr", in_channels: int = 1, classes: int = 10, size: int = 8,
                 channels: tuple[int, ...] = (16, 32)) -> None:
        super().__init__()
        if kind not in BAYES_CNN_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {BAYES_CNN_KINDS}")
        conv = LRConv2d if kind == "lr" else BBBConv2d
        linear = LRLinear if kind == "lr" else BBBLinear
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            blocks += [conv(c_in, c, 3, padding=1), BayesianRLayerNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
            size //= 2
        self.features = nn.Sequential(*blocks)
        self.head = linear(c_in * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out
