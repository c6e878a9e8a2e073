"""R-LayerNorm modules: last-dims drop-ins for nn.LayerNorm, and per-channel 2d layers."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from rln_verified._norm import NormConfig, Shape, as_shape, check_config, r_norm
from rln_verified._norm_formula import lambda_of, raw_of


class _RNormBase(nn.Module):
    """Shared parameters and configuration: affine, lambda (bounded raw parameterization), alpha, eps."""

    lambda_min: float
    lambda_max: float
    eps: float
    alpha: float
    _bayes: bool

    def _init_common(
        self,
        affine_shape: tuple[int, ...],
        eps: float,
        elementwise_affine: bool,
        bias: bool,
        lambda_init: float,
        lambda_min: float,
        lambda_max: float,
        alpha: float,
        factory_kwargs: dict[str, Any],
    ) -> None:
        check_config(eps, alpha, lambda_init, lambda_min, lambda_max)
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.lambda_min = float(lambda_min)
        self.lambda_max = float(lambda_max)
        self.lambda_init = float(lambda_init)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(affine_shape, **factory_kwargs))
            if bias:
                self.bias = nn.Parameter(torch.empty(affine_shape, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        # One element, not 0-d: FSDP2 shards every parameter along dim 0. Checkpoints that saved it 0-d still load.
        self.lambda_raw = nn.Parameter(torch.empty(1, **factory_kwargs))
        self.register_load_state_dict_pre_hook(_lambda_raw_as_vector)  # type: ignore[no-untyped-call]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        with torch.no_grad():
            self.lambda_raw.fill_(raw_of(self.lambda_init, self.lambda_min, self.lambda_max))

    @property
    def lambda_(self) -> torch.Tensor:
        """The effective lambda, always inside [lambda_min, lambda_max] (read-only)."""
        return lambda_of(self.lambda_raw, self.lambda_min, self.lambda_max).reshape(())

    def _common_repr(self) -> str:
        s = f"eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
        s += f"lambda=[{self.lambda_min}, {self.lambda_max}]"
        if self._bayes:
            s += f", alpha={self.alpha}"
        return s

    def _config(self, two_d: bool, shape: tuple[int, ...]) -> NormConfig:
        """Read on every call, so a changed attribute (``eps``, ``alpha``, the lambda bounds) takes effect; checked
        on every call too, with the constructor's rules, so a bad one is a ValueError, not NaN output."""
        eps, alpha, lo, hi = self.eps, self.alpha if self._bayes else 0.0, self.lambda_min, self.lambda_max
        if not (isinstance(eps, float) and isinstance(alpha, float) and isinstance(lo, float) and isinstance(hi, float)
                and 0.0 < eps < math.inf and 0.0 <= alpha < math.inf and 0.0 <= lo < hi < math.inf):
            try:
                check_config(eps, alpha, lo + 0.5 * (hi - lo) if hi > lo else lo, lo, hi)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{type(self).__name__}: {exc} (an attribute set after construction)") from None
        return NormConfig(eps, alpha, self._bayes, two_d, shape, lo, hi, float32_under_autocast=True)


def _lambda_raw_as_vector(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Checkpoints written before lambda_raw had shape (1,) stored it 0-d: load them unchanged in value."""
    key = prefix + "lambda_raw"
    t = state_dict.get(key)
    if isinstance(t, torch.Tensor) and t.ndim == 0:
        state_dict[key] = t.reshape(1)


class _LastDims(_RNormBase):
    def __init__(
        self,
        normalized_shape: Shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        lambda_init: float = 0.5,
        lambda_min: float = 1e-3,
        lambda_max: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        raw: tuple[object, ...] = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not raw or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in raw):
            raise ValueError(f"normalized_shape must be a non-empty shape of positive ints, got {normalized_shape!r}")
        shape = as_shape(normalized_shape)
        if shape[-1] < 2:
            raise ValueError(
                f"the last normalized dim must be >= 2 for the width-3 reflect-padded window, got {shape[-1]}"
            )
        self.normalized_shape: tuple[int, ...] = tuple(int(n) for n in shape)
        self._init_common(
            self.normalized_shape,
            eps,
            elementwise_affine,
            bias,
            lambda_init,
            lambda_min,
            lambda_max,
            alpha,
            factory_kwargs,
        )

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, {self._common_repr()}"

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self._config(False, self.normalized_shape)
        return r_norm(x, self.weight, self.bias, self.lambda_raw, cfg, type(self).__name__)


class _TwoD(_RNormBase):
    num_channels: int

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        lambda_init: float = 0.5,
        lambda_min: float = 1e-3,
        lambda_max: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, numbers.Integral) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = int(num_channels)
        self._init_common(
            (self.num_channels,), eps, affine, bias, lambda_init, lambda_min, lambda_max, alpha, factory_kwargs
        )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, {self._common_repr()}"

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self._config(True, (self.num_channels,))
        return r_norm(x, self.weight, self.bias, self.lambda_raw, cfg, type(self).__name__)


class RLayerNorm(_LastDims):
    r"""R-LayerNorm over the trailing ``normalized_shape`` dims, a drop-in for :class:`torch.nn.LayerNorm`.

    .. math::
        y = \gamma \odot \frac{x - \mu}{\sqrt{v + \epsilon}\,(1 + \lambda r)} + \beta,\qquad
        r = \frac{\nu}{v + \epsilon}

    ``mu`` and ``v`` are the mean and biased variance of the group (all trailing dims), ``nu`` the mean of
    the local variance in a width-3 reflect-padded window along the last dim (N0 in proofs/norm.md).
    ``lambda`` is learnable and stays in ``[lambda_min, lambda_max]`` (N8).
    """

    _bayes = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]


class BayesianRLayerNorm(_LastDims):
    r"""Bayesian R-LayerNorm over the trailing dims, a drop-in for :class:`torch.nn.LayerNorm`.

    .. math::
        y = \gamma \odot \frac{x - \mu}{\sqrt{v + \epsilon}\; e^{\alpha\,\psi(\lambda r)}} + \beta,\qquad
        u = 1 - e^{-2\alpha\,\psi(\lambda r)}

    ``u`` in ``[0, 1)`` is the fraction of the group's variance treated as noise (N7); it is returned,
    keepdim, by ``forward(x, return_uncertainty=True)``.
    """

    _bayes = True

    def forward(self, x: torch.Tensor, return_uncertainty: bool = False) -> Any:
        y, u = self._forward(x)
        return (y, u) if return_uncertainty else y


class RLayerNorm2d(_TwoD):
    r"""R-LayerNorm for ``(N, C, H, W)`` maps: statistics per (sample, channel) over ``(H, W)``, 3x3 window,
    per-channel affine. Same formula as :class:`RLayerNorm`."""

    _bayes = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]


class BayesianRLayerNorm2d(_TwoD):
    r"""Bayesian R-LayerNorm for ``(N, C, H, W)`` maps (the seed's semantics); ``u`` has shape (N, C, 1, 1)."""

    _bayes = True

    def forward(self, x: torch.Tensor, return_uncertainty: bool = False) -> Any:
        y, u = self._forward(x)
        return (y, u) if return_uncertainty else y


__all__ = ["BayesianRLayerNorm", "BayesianRLayerNorm2d", "RLayerNorm", "RLayerNorm2d"]
