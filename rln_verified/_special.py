"""psi, softplus and inv_softplus. (stub: being implemented)"""

from __future__ import annotations

import torch


def psi(t: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError


def softplus(x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError
