"""The seed design's R-LayerNorm formulas, written out eagerly and naively ON PURPOSE.

This module is a *reference of what not to do*. It reproduces, from the seed design's formulas, the form the
public implementation takes, so that the benchmarks can put its cost on record and ``rln-verify audit`` can
show, input by input, what the verified layers in ``rln_verified`` fix. Do not use it in a model.

The formulas, per group (per sample and channel over (H, W) for the 2d classes, over the trailing
``normalized_shape`` for the last-dims class)::

    mu      = mean(x),   v = mean((x - mu)^2),   sigma = sqrt(v + eps)
    L       = avgpool3(x^2) - avgpool3(x)^2          # local variance, reflect padding, UNCENTRED data
    r       = mean(L) / (v + eps)
    lambda  = clamp(lambda_raw, 1e-3, 1)               # gradient is exactly 0 outside the range
    psi(t)  = log1p(t) - t / (1 + t)                   # textbook form
    R-LN:           y = gamma * (x - mu) / (sigma * (1 + lambda r)) + beta
    Bayesian R-LN:  sigma_eff = sigma * exp(psi(lambda r)),   y = gamma * (x - mu) / sigma_eff + beta
                    "uncertainty" = 1 / (sigma_eff^2 + eps)   # a precision, not an uncertainty

Known defects kept deliberately (each is fixed in the verified layers): the local variance cancels
catastrophically for inputs with a large offset; a huge input overflows ``x^2``; the clamp kills lambda's
gradient; the reported "uncertainty" grows as the input gets smoother; every step is a separate eager
pass with its own saved activations, so forward plus backward is slow and memory-hungry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SeedBayesianRLayerNorm", "SeedBayesianRLayerNorm2d", "SeedRLayerNorm2d", "seed_psi"]


def seed_psi(t: torch.Tensor) -> torch.Tensor:
    """Textbook ``psi(t) = log1p(t) - t / (1 + t)``: cancels for small t (no series branch)."""
    return torch.log1p(t) - t / (1.0 + t)


def _local_var_2d(x: torch.Tensor) -> torch.Tensor:
    """avgpool3x3(x^2) - avgpool3x3(x)^2 with reflect padding, on uncentred x: (N, C, H, W)."""
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    m1 = F.avg_pool2d(xp, 3, stride=1)
    m2 = F.avg_pool2d(xp * xp, 3, stride=1)
    return m2 - m1 * m1


def _local_var_last(x: torch.Tensor) -> torch.Tensor:
    """Width-3 window along the last axis, reflect padding, uncentred: any shape (..., L)."""
    flat = x.reshape(-1, 1, x.shape[-1])
    xp = F.pad(flat, (1, 1), mode="reflect")
    m1 = F.avg_pool1d(xp, 3, stride=1)
    m2 = F.avg_pool1d(xp * xp, 3, stride=1)
    return (m2 - m1 * m1).reshape(x.shape)


class _SeedBase(nn.Module):
    def __init__(self, affine_shape: Sequence[int], eps: float, lambda_init: float) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(*affine_shape))
        self.bias = nn.Parameter(torch.zeros(*affine_shape))
        self.lambda_raw = nn.Parameter(torch.tensor(float(lambda_init)))

    def lam(self) -> torch.Tensor:
        return torch.clamp(self.lambda_raw, 1e-3, 1.0)


class SeedRLayerNorm2d(_SeedBase):
    """Seed-style R-LayerNorm over (H, W) per (sample, channel), (N, C, H, W) input. Naive on purpose."""

    def __init__(self, num_channels: int, eps: float = 1e-5, lambda_init: float = 0.5) -> None:
        super().__init__((num_channels,), eps, lambda_init)
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mu) ** 2).mean(dim=(2, 3), keepdim=True)
        sigma = torch.sqrt(var + self.eps)
        r = _local_var_2d(x).mean(dim=(2, 3), keepdim=True) / (var + self.eps)
        y = (x - mu) / (sigma * (1.0 + self.lam() * r))
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SeedBayesianRLayerNorm2d(_SeedBase):
    """Seed-style Bayesian R-LayerNorm over (H, W) per (sample, channel). Naive on purpose.

    ``forward(x, return_uncertainty=True)`` returns ``(y, 1 / (sigma_eff^2 + eps))`` as the seed does.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, lambda_init: float = 0.5) -> None:
        super().__init__((num_channels,), eps, lambda_init)
        self.num_channels = num_channels

    def forward(
        self, x: torch.Tensor, return_uncertainty: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mu = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mu) ** 2).mean(dim=(2, 3), keepdim=True)
        sigma = torch.sqrt(var + self.eps)
        r = _local_var_2d(x).mean(dim=(2, 3), keepdim=True) / (var + self.eps)
        sigma_eff = sigma * torch.exp(seed_psi(self.lam() * r))
        y = (x - mu) / sigma_eff * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if return_uncertainty:
            return y, 1.0 / (sigma_eff**2 + self.eps)
        return y


class SeedBayesianRLayerNorm(_SeedBase):
    """Seed-style Bayesian R-LayerNorm over the trailing ``normalized_shape``; window along the last axis."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, lambda_init: float = 0.5) -> None:
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        super().__init__(shape, eps, lambda_init)
        self.normalized_shape = shape

    def forward(
        self, x: torch.Tensor, return_uncertainty: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        dims = tuple(range(-len(self.normalized_shape), 0))
        mu = x.mean(dim=dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)
        sigma = torch.sqrt(var + self.eps)
        r = _local_var_last(x).mean(dim=dims, keepdim=True) / (var + self.eps)
        sigma_eff = sigma * torch.exp(seed_psi(self.lam() * r))
        y = (x - mu) / sigma_eff * self.weight + self.bias
        if return_uncertainty:
            return y, 1.0 / (sigma_eff**2 + self.eps)
        return y
