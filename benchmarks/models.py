"""The seed's small CNN, parameterized by its norm layer."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def small_cnn(norm: Callable[[int], nn.Module], in_channels: int = 3, n_classes: int = 10) -> nn.Sequential:
    """Conv 3->16->32->64 (3x3, padding 1), each followed by ``norm(C)``, Tanh and MaxPool(2); then global
    average pooling and Linear(64 -> 10). Input (N, 3, 32, 32)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in (16, 32, 64):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), norm(c), nn.Tanh(), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes)]
    return nn.Sequential(*layers)
