"""Gaussian kernels. (stub: being implemented)"""

from __future__ import annotations

import torch

Tensorish = torch.Tensor | float


def normal_pdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    raise NotImplementedError


def normal_cdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    raise NotImplementedError


def normal_logcdf(x: torch.Tensor, mu: Tensorish = 0.0, sigma: Tensorish = 1.0) -> torch.Tensor:
    raise NotImplementedError


def relu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError


def neg_relu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError


def crelu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError


def kl_normal(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError
