"""BayesianMLP: an MLP of the Bayesian linear layers, with ObjectRL's constructor."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rln_verified._bayesian_linear import (
    LAYER_TYPES,
    Act,
    BayesianLinear,
    CLTLinear,
    CLTLinearDet,
    CReLU,
    LayerType,
    is_int,
)
from rln_verified._norm_layers import BayesianRLayerNorm


class BayesianMLP(nn.Module):
    r"""An MLP of Bayesian linear layers (ObjectRL's constructor).

    ``depth`` linear layers; hidden layers have ``width`` units (``2 * width`` after CReLU).

    - ``bbb``, ``lr``: ``layer -> [norm] -> act -> ... -> layer``; ``forward(x)`` returns a sample.
      ``has_norm`` inserts :class:`~rln_verified.BayesianRLayerNorm` (no affine) before each
      activation: the hidden activations are samples, so a sample-wise normalization is well defined.
    - ``clt``, ``cltdet``: the activation is inside each layer; ``forward(x, var=None)`` returns the
      predictive ``(mean, var)`` (``var`` None for ``cltdet`` with a deterministic input, and in MAP
      mode). The first layer has ``is_input`` and the last ``is_output`` set. ``has_norm`` raises
      ``ValueError``: a normalization of a random vector has no closed-form moments to propagate.

    Raises:
        ValueError: ``depth < 1``, ``width < 1``, an unknown ``layer_type`` or ``act``, ``has_norm`` with
            a CLT layer type (or with ``width < 2`` and a hidden layer, ``depth > 1``).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        depth: int,
        width: int,
        layer_type: LayerType = "lr",
        act: Act = "relu",
        has_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {sorted(LAYER_TYPES)}, got {layer_type!r}")
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        for name, v in (("depth", depth), ("width", width), ("dim_in", dim_in), ("dim_out", dim_out)):
            if not is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.layer_type: LayerType = layer_type
        self.act: Act = act
        self.is_clt = layer_type in ("clt", "cltdet")
        if has_norm and self.is_clt:
            raise ValueError("has_norm is not available for CLT layers: a normalization of a random vector has no "
                             "closed-form moments to propagate; use layer_type 'bbb' or 'lr'")
        if has_norm and width < 2 and depth > 1:  # depth 1 has no hidden layer, so no norm
            raise ValueError(f"has_norm needs width >= 2 (R-LayerNorm's window), got {width}")
        self.has_norm = bool(has_norm)
        mult = 2 if act == "crelu" else 1
        dims = [dim_in] + [width] * (depth - 1) + [dim_out]
        ins = [dim_in] + [width * mult] * (depth - 1)
        cls = LAYER_TYPES[layer_type]
        layers: list[nn.Module] = []
        for i in range(depth):
            last = i == depth - 1
            if self.is_clt:
                clt_cls: type[CLTLinear] = CLTLinearDet if layer_type == "cltdet" else CLTLinear
                layers.append(clt_cls(ins[i], dims[i + 1], act=act, is_input=i == 0, is_output=last,
                                      **factory_kwargs))
                continue
            layers.append(cls(ins[i], dims[i + 1], **factory_kwargs))
            if not last:
                if has_norm:
                    layers.append(BayesianRLayerNorm(width, elementwise_affine=False, **factory_kwargs))
                layers.append(CReLU() if act == "crelu" else nn.ReLU())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], var: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(x, tuple):  # ObjectRL passes (mean, var) as one argument
            x, var = x
        if not self.is_clt:
            if var is not None:
                raise ValueError(f"an input variance is only used by CLT layers, not by layer_type "
                                 f"{self.layer_type!r}")
            out: torch.Tensor = self.model(x)
            return out
        m, v = x, var
        for layer in self.model:
            m, v = layer(m, v)
        return m, v

    def bayesian_layers(self) -> list[BayesianLinear]:
        return [m for m in self.model if isinstance(m, BayesianLinear)]

    def map(self, on: bool = True) -> None:
        for layer in self.bayesian_layers():
            layer.map(on)

    def set_manual_reset(self, manual_reset: bool = True) -> None:
        for layer in self.bayesian_layers():
            layer.set_manual_reset(manual_reset)

    def reset_randomness(self) -> None:
        for layer in self.bayesian_layers():
            layer.reset_randomness()

    def get_kl(self) -> tuple[torch.Tensor, int]:
        """``(sum of the layers' KL, total number of weight and bias elements with a posterior)``.

        ``cltdet`` layers have no posterior and contribute ``(0, 0)``.
        """
        layers = [m for m in self.bayesian_layers() if m.weight_rho is not None]
        if not layers:
            return next(self.parameters()).new_zeros(()), 0
        kls = [layer.KL() for layer in layers]
        return torch.stack([k for k, _ in kls]).sum(), sum(n for _, n in kls)


__all__ = ["BayesianMLP"]
