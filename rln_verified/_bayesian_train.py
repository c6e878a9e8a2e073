"""Training helpers for models of Bayesian linear layers: the per-point negative ELBO and the predictive moments.

``elbo`` fixes the scaling of the KL term (summed over all parameters, divided by the dataset size, C1);
``predictive`` gives the predictive mean and variance, sampled for BBB/LR layers and in closed form for a CLT
``BayesianMLP``.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import nn

from rln_verified._bayesian_conv import CLTConv2d
from rln_verified._bayesian_linear import BayesianLayer, CLTLinear, is_int
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified._tools import unwrap_compiled


def _posterior_layers(model: nn.Module) -> list[BayesianLayer]:
    """The Bayesian linear layers of ``model`` with a posterior (``weight_rho`` set), in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, BayesianLayer) and m.weight_rho is not None]


def elbo(model: nn.Module, nll: torch.Tensor, n_data: int, kl_weight: float = 1.0) -> torch.Tensor:
    r"""The negative ELBO per data point, the loss to minimise: ``nll + kl_weight * KL / n_data``.

    .. math::
        \mathcal{L} = \underbrace{\frac{1}{|B|}\sum_{i\in B} \mathrm{NLL}_i}_{\texttt{nll}}
        + w\,\frac{\sum_{\text{layers}} \sum_{\text{params}} KL(q\,\|\,p)}{N}

    The convention (C1): ``nll`` is the batch's NLL already **averaged** per example, and the KL is the **sum**
    over every weight and bias of every Bayesian layer in ``model`` (``layer.KL()[0]`` summed over
    ``model.modules()``), divided by the **dataset size** ``n_data``, not the batch size. This is the full-data
    negative ELBO divided by ``N``: its minimiser does not depend on the batch size, and ``kl_weight = 1`` is the
    exact ELBO. (Dividing the KL by the batch size, or a mean KL per parameter, weights the prior wrongly.)

    Layers without a posterior (``CLTLinearDet``: ``weight_rho`` is None) add nothing; so does every other module.

    Args:
        model: a module holding at least one Bayesian linear layer with a posterior.
        nll: a 0-d real floating tensor, the batch's mean negative log-likelihood.
        n_data: the number of training points, a positive int (not a bool).
        kl_weight: a finite real ``>= 0`` (``0`` gives ``nll`` exactly; below 1 is KL annealing).

    Returns:
        A 0-d tensor, differentiable with respect to ``nll`` and every layer's ``mu`` and ``rho``.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; ``nll`` not a real floating tensor; ``n_data`` not an int;
            ``kl_weight`` not a real number.
        ValueError: ``nll`` not 0-d; ``n_data < 1``; ``kl_weight`` negative or not finite; no Bayesian layer
            with a posterior in ``model``.

    Example:
        >>> import torch
        >>> from rln_verified import BayesianMLP
        >>> net = BayesianMLP(2, 1, depth=2, width=8, layer_type="lr")
        >>> x, y = torch.randn(16, 2), torch.randn(16, 1)
        >>> loss = elbo(net, ((net(x) - y) ** 2).mean(), n_data=1000)
        >>> loss.shape
        torch.Size([])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"elbo: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(nll, torch.Tensor) or not nll.is_floating_point():
        what = f"a tensor of dtype {nll.dtype}" if isinstance(nll, torch.Tensor) else type(nll).__name__
        raise TypeError(f"elbo: nll must be a real floating-point tensor (the batch's mean NLL), got {what}")
    if nll.dim() != 0:
        raise ValueError(f"elbo: nll must be a 0-d tensor (the batch's NLL averaged per example), got shape "
                         f"{tuple(nll.shape)}; reduce it with .mean() over the batch")
    if not is_int(n_data):
        raise TypeError(f"elbo: n_data must be an int (the dataset size), got {type(n_data).__name__}")
    if int(n_data) < 1:
        raise ValueError(f"elbo: n_data must be a positive int (the dataset size), got {n_data}")
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, numbers.Real):
        raise TypeError(f"elbo: kl_weight must be a real number, got {type(kl_weight).__name__}")
    w = float(kl_weight)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"elbo: kl_weight must be finite and >= 0, got {w}")
    layers = _posterior_layers(model)
    if not layers:
        raise ValueError("elbo: model holds no Bayesian linear layer with a posterior (BBBLinear, LRLinear or "
                         "CLTLinear; CLTLinearDet has none), so there is no KL term")
    kl = layers[0].KL()[0]
    for layer in layers[1:]:
        kl = kl + layer.KL()[0]
    return nll + w * kl / int(n_data)


def _as_bayesian_mlp(model: nn.Module) -> BayesianMLP | None:
    """``model`` itself, or the module inside ``torch.compile(model)``, when it is a BayesianMLP."""
    inner = unwrap_compiled(model)
    return inner if isinstance(inner, BayesianMLP) else None


def predictive(model: nn.Module, x: torch.Tensor, samples: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictive mean and variance of ``model`` at ``x``, per output element.

    - BBB/LR layers (they sample): ``samples`` forward passes ``model(x)``, each with fresh noise, and their
      per-element sample mean and unbiased sample variance (``correction=1``). The model must return a tensor.
    - A ``BayesianMLP`` with ``layer_type`` ``"clt"`` or ``"cltdet"`` (also under ``torch.compile``): its forward
      already gives the closed-form ``(mean, var)``, returned as it is after one call; ``samples`` is then checked
      but ignored. A ``None`` variance (``cltdet`` with a deterministic input: the output is deterministic) is
      returned as zeros.

    The result is the posterior predictive: for the call, every Bayesian layer leaves MAP mode and
    ``manual_reset`` is off (so each pass draws fresh noise). Each layer's MAP mode, ``manual_reset`` and stored
    noise are put back on return, also when the model raises. The grad mode is the caller's: under
    ``torch.no_grad()`` nothing is recorded, otherwise the moments are differentiable.

    Args:
        model: a module holding BBB/LR layers, or a CLT ``BayesianMLP``.
        x: the input, passed as ``model(x)``.
        samples: the number of passes, an int ``>= 2`` (one sample has no sample variance).

    Returns:
        ``(mean, var)``, each shaped like the model's output.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; a sampling model that does not return a tensor.
        ValueError: ``samples`` not an int ``>= 2``; no Bayesian linear layer in ``model``; CLT layers outside a
            ``BayesianMLP`` (their moments are passed between layers by the ``BayesianMLP``), or mixed with BBB/LR.

    Example:
        >>> import torch
        >>> from rln_verified import BayesianMLP
        >>> net = BayesianMLP(2, 1, depth=2, width=8, layer_type="bbb")
        >>> mean, var = predictive(net, torch.randn(5, 2), samples=8)
        >>> mean.shape, var.shape
        (torch.Size([5, 1]), torch.Size([5, 1]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"predictive: model must be an nn.Module, got {type(model).__name__}")
    if not is_int(samples) or int(samples) < 2:
        raise ValueError(f"predictive: samples must be an int >= 2 (one sample has no sample variance), "
                         f"got {samples!r}")
    layers = [m for m in model.modules() if isinstance(m, BayesianLayer)]
    if not layers:
        raise ValueError("predictive: model holds no Bayesian linear layer (BBBLinear, LRLinear, CLTLinear or "
                         "CLTLinearDet), so it has no predictive distribution")
    n_clt = sum(isinstance(m, (CLTLinear, CLTConv2d)) for m in layers)
    mlp = _as_bayesian_mlp(model)
    if n_clt and (n_clt != len(layers) or mlp is None or not mlp.is_clt):
        raise ValueError("predictive: CLT layers give moments, not samples, and only a BayesianMLP with "
                         "layer_type 'clt' or 'cltdet' passes them from layer to layer; pass that BayesianMLP "
                         "itself, or use BBBLinear/LRLinear layers")
    with contextlib.ExitStack() as stack:
        for m in layers:
            stack.enter_context(m.sampling())
        if n_clt:
            mean, var = model(x)
            return mean, (torch.zeros_like(mean) if var is None else var)
        draws: list[torch.Tensor] = []
        for _ in range(int(samples)):
            y = model(x)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"predictive: the model returned {type(y).__name__}; sampling needs a model that "
                                "returns one tensor per call")
            draws.append(y)
        stacked = torch.stack(draws)
        return stacked.mean(dim=0), stacked.var(dim=0, correction=1)


__all__ = ["elbo", "predictive"]
