"""What a normalization-layer check runs against: ours or anyone's layer.

A :class:`LayerSubject` says how to build the layer, what input shape it takes, and how the input
splits into the groups that are normalized together. The generic layer checks (output bound,
finiteness at every magnitude, gradient bound, shift/scale invariance, batch isolation, sum invariant,
dtype robustness) use only this, so ``rln-verify audit`` runs the very checks the test suite runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rln_verified.verify._core import NotApplicable

LayerFactory = Callable[[torch.device, torch.dtype], nn.Module]
GroupView = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerSubject:
    """A normalization layer under test.

    Attributes:
        name: display name (``"BayesianRLayerNorm2d"`` or ``"torch.nn:LayerNorm"``).
        factory: ``(device, dtype) -> module``; a fresh module each call.
        shape: input shape, batch dimension first.
        groups: maps an input-shaped tensor to a ``(num_groups, M)`` view/copy of its groups, in the
            order the layer normalizes them (e.g. ``x.reshape(-1, M)`` for LayerNorm over the last dim,
            ``x.reshape(N * C, H * W)`` for per-channel 2d layers).
        eps: the layer's eps, when it has one (used by bounds that involve ``sqrt(v + eps)``).
        info: free-form facts a check may need (``{"alpha": 1.0, "lambda_max": 1.0}``); a check that needs
            a fact the subject lacks reports itself as not applicable.
        forward: how to call the module and get the normalized output (default ``module(x)``; a layer
            returning a tuple gives its first element).
    """

    name: str
    factory: LayerFactory
    shape: tuple[int, ...]
    groups: GroupView
    eps: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.forward is not None:
            return self.forward(module, x)
        out = module(x)
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.name}: forward returned {type(out).__name__}, expected a Tensor")
        return out

    @property
    def group_size(self) -> int:
        probe = torch.zeros(self.shape)
        return int(self.groups(probe).shape[-1])


__all__ = ["GroupView", "LayerFactory", "LayerSubject", "NotApplicable"]
