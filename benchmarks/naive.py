"""Naive same-math Bayesian linear and conv layers, written from the formulas for the benchmarks.

These are the "same math written naively" baselines of the speed targets: the plainest eager PyTorch that
computes what ``BBBLinear``, ``LRLinear``, ``CLTLinear``, ``CLTLinearDet``, ``BBBConv2d`` and ``LRConv2d`` compute,
with std = exp(rho) (a conv ``Posterior`` holds a kernel ``(out, in, kH, kW)``).
No safe gradients, no special cases: only the cost of the math is of interest. Also here: Monte Carlo
predictive moments of a Bayesian MLP, by sampling whole weight sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass
class Posterior:
    """Mean and rho (std = exp(rho)) of one layer's weight (out, in), or kernel (out, in, kH, kW), and bias (out,)."""

    weight_mu: torch.Tensor
    weight_rho: torch.Tensor
    bias_mu: torch.Tensor
    bias_rho: torch.Tensor

    @classmethod
    def random(
        cls, n_in: int, n_out: int, std: float = 0.05, dtype: torch.dtype = torch.float32, requires_grad: bool = True
    ) -> Posterior:
        bound = 1.0 / math.sqrt(n_in)
        wm = torch.empty(n_out, n_in, dtype=dtype).uniform_(-bound, bound)
        bm = torch.empty(n_out, dtype=dtype).uniform_(-bound, bound)
        wr = torch.full((n_out, n_in), math.log(std), dtype=dtype)
        br = torch.full((n_out,), math.log(std), dtype=dtype)
        return cls(*(t.requires_grad_(requires_grad) for t in (wm, wr, bm, br)))

    def params(self) -> list[torch.Tensor]:
        return [self.weight_mu, self.weight_rho, self.bias_mu, self.bias_rho]


def bbb_forward(p: Posterior, x: torch.Tensor) -> torch.Tensor:
    """Sample W = mu + exp(rho) * eps and b likewise, then x W^T + b."""
    w = p.weight_mu + torch.exp(p.weight_rho) * torch.randn_like(p.weight_mu)
    b = p.bias_mu + torch.exp(p.bias_rho) * torch.randn_like(p.bias_mu)
    return x @ w.t() + b


def lr_forward(p: Posterior, x: torch.Tensor) -> torch.Tensor:
    """Local reparameterization: mean x mu^T + mu_b, var (x^2) sigma^2^T + sigma_b^2, sample mean + sqrt(var) eps."""
    mean = x @ p.weight_mu.t() + p.bias_mu
    var = (x * x) @ torch.exp(2.0 * p.weight_rho).t() + torch.exp(2.0 * p.bias_rho)
    return mean + torch.sqrt(var) * torch.randn_like(mean)


def bbb_conv_forward(p: Posterior, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """Sample a kernel W = mu + exp(rho) * eps (shared by the batch) and b likewise, then conv(x, W) + b."""
    w = p.weight_mu + torch.exp(p.weight_rho) * torch.randn_like(p.weight_mu)
    b = p.bias_mu + torch.exp(p.bias_rho) * torch.randn_like(p.bias_mu)
    return F.conv2d(x, w, b, padding=padding)


def lr_conv_forward(p: Posterior, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """Local reparameterization: mean conv(x, mu) + mu_b, var conv(x^2, sigma^2) + sigma_b^2, sample mean +
    sqrt(var) eps with eps of the output's shape. Two convolutions where nn.Conv2d has one."""
    mean = F.conv2d(x, p.weight_mu, p.bias_mu, padding=padding)
    var = F.conv2d(x * x, torch.exp(2.0 * p.weight_rho), torch.exp(2.0 * p.bias_rho), padding=padding)
    return mean + torch.sqrt(var) * torch.randn_like(mean)


def relu_moments(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook moments of ReLU(z), z ~ N(m, v): no tail care."""
    s = torch.sqrt(v)
    a = m / s
    cdf = 0.5 * (1.0 + torch.erf(a / _SQRT2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * a * a)
    mean = m * cdf + s * pdf
    var = (m * m + v) * cdf + m * s * pdf - mean * mean
    return mean, var


def clt_forward(
    p: Posterior, mu_h: torch.Tensor, var_h: torch.Tensor | None, relu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLT moment propagation: var = (var_h + mu_h^2) sigma_w^2 + var_h mu_w^2 + sigma_b^2, then ReLU moments."""
    sw2 = torch.exp(2.0 * p.weight_rho)
    mean = mu_h @ p.weight_mu.t() + p.bias_mu
    if var_h is None:
        var = (mu_h * mu_h) @ sw2.t() + torch.exp(2.0 * p.bias_rho)
    else:
        var = (var_h + mu_h * mu_h) @ sw2.t() + var_h @ (p.weight_mu * p.weight_mu).t() + torch.exp(2.0 * p.bias_rho)
    return relu_moments(mean, var) if relu else (mean, var)


def clt_det_forward(
    weight: torch.Tensor, bias: torch.Tensor, mu_h: torch.Tensor, var_h: torch.Tensor, relu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic weights: mean mu_h W^T + b, var var_h (W^2)^T, then ReLU moments."""
    mean = mu_h @ weight.t() + bias
    var = var_h @ (weight * weight).t()
    return relu_moments(mean, var) if relu else (mean, var)


def mc_predictive(
    layers: Sequence[Posterior],
    x: torch.Tensor,
    samples: int,
    chunk: int = 4096,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo predictive mean and (biased) variance of an MLP with ReLU between layers.

    Each sample draws one whole weight set shared by the batch, which is what the CLT moments approximate.
    Chunks of ``chunk`` samples bound the memory; chunk statistics are centred and merged in float64 (Chan et
    al.'s pairwise update), never E[h^2] - E[h]^2.
    """
    n_out = layers[-1].weight_mu.shape[0]
    mean = torch.zeros(x.shape[0], n_out, dtype=torch.float64)
    m2 = torch.zeros_like(mean)
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        h = x.unsqueeze(0).expand(k, *x.shape)
        for i, p in enumerate(layers):
            wm, bm = p.weight_mu.detach(), p.bias_mu.detach()
            w_noise = torch.randn((k, *wm.shape), dtype=wm.dtype, generator=generator)
            b_noise = torch.randn((k, 1, *bm.shape), dtype=bm.dtype, generator=generator)
            w = wm + torch.exp(p.weight_rho.detach()) * w_noise
            b = bm + torch.exp(p.bias_rho.detach()) * b_noise
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if i < len(layers) - 1:
                h = F.relu(h)
        hd = h.double()
        c_mean = hd.mean(0)
        c_m2 = ((hd - c_mean) ** 2).sum(0)
        total = done + k
        delta = c_mean - mean
        mean = mean + delta * (k / total)
        m2 = m2 + c_m2 + delta * delta * (done * k / total)
        done = total
    return mean, m2 / samples
