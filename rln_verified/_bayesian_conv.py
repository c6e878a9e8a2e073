"""Bayesian 2-D convolutions: BBB, local reparameterization and CLT moment propagation (CV1, CV2 in
``proofs/bayesian_linear.md``).

The posterior, prior, ``KL()``, ``std()``, MAP mode and ``manual_reset`` are the linear family's
(:class:`~rln_verified.BayesianLayer`, C1, C4-C6), over a kernel of shape ``(out, in / groups, kH, kW)``. The
convolution's arguments follow ``nn.Conv2d``. Each layer's ``forward`` is one call of its entry in ``_bayesian_ops``
(``bbb_conv2d``, ``lr_conv2d``, ``clt_conv2d``), in plain torch operations, so every PyTorch transform sees ordinary
ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rln_verified._bayesian_linear import Act, BayesianLayer, Prior, is_int
from rln_verified._bayesian_ops import ConvConfig, bbb_conv2d, clt_conv2d, lr_conv2d

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
Pair = int | tuple[int, int]


def _pair(value: object, name: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= low``, as a pair; anything else raises ``ValueError``."""
    if is_int(value):
        items: Sequence[object] = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        items = value
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if not all(is_int(v) and int(v) >= low for v in items):  # type: ignore[call-overload]
        raise ValueError(f"{name} must be an int or a pair of ints >= {low}, got {value!r}")
    return int(items[0]), int(items[1])  # type: ignore[call-overload]


class BayesianConv2d(BayesianLayer):
    r"""Base of the Bayesian convolutions (``forward`` raises NotImplementedError here): a factorized Gaussian
    posterior over the kernel and the bias, as :class:`~rln_verified.BayesianLinear` has over its weights.

    Args:
        in_channels, out_channels: positive ints, both divisible by ``groups``.
        kernel_size, stride, dilation: an int or a pair of ints, all >= 1.
        padding: an int or a pair of ints >= 0, or "valid" or "same" ("same" needs stride 1), as ``nn.Conv2d``.
        groups: a positive int.
        bias: learn a bias posterior (``bias_mu``, ``bias_rho``; None when False).
        padding_mode: "zeros", "reflect", "replicate" or "circular", as ``nn.Conv2d``.
        prior_mean, prior_std: as :class:`~rln_verified.BayesianLinear`; a tensor prior is one number or
            kernel-shaped ``(out, in / groups, kH, kW)``.
        use_softplus, manual_reset, device, dtype: as :class:`~rln_verified.BayesianLinear`.

    Initialization follows ``nn.Conv2d``: Kaiming-uniform kernel means, bias means uniform in
    ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` with ``fan_in = in / groups * kH * kW``, and every std ``INIT_STD``.

    Raises:
        ValueError: a bad size, stride, padding, dilation, group count or padding mode, or a bad prior.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Pair,
        stride: Pair = 1,
        padding: Pair | str = 0,
        dilation: Pair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        prior_mean: Prior = None,
        prior_std: Prior = None,
        use_softplus: bool = False,
        manual_reset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not is_int(v) or int(v) < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible "
                             f"by groups ({groups})")
        k = _pair(kernel_size, "kernel_size", 1)
        st = _pair(stride, "stride", 1)
        dl = _pair(dilation, "dilation", 1)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
            if padding == "same" and st != (1, 1):
                raise ValueError("padding='same' needs stride 1, as nn.Conv2d")
            pd: tuple[int, int] | str = padding
            # "same": the total padding d (k - 1) per side pair, the extra one after (nn.Conv2d's split)
            tot = [dl[i] * (k[i] - 1) if padding == "same" else 0 for i in (0, 1)]
            pad = (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2)
        else:
            pd = _pair(padding, "padding", 0)
            pad = (pd[1], pd[1], pd[0], pd[0])
        fan_in = in_channels // groups * k[0] * k[1]
        super().__init__((out_channels, in_channels // groups, *k), out_channels, fan_in, bias, prior_mean,
                         prior_std, use_softplus, manual_reset, device, dtype)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = k
        self.stride = st
        self.padding = pd
        self.dilation = dl
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self._pad = pad

    def _conv_config(self, **extra: Any) -> ConvConfig:
        return ConvConfig(self.use_softplus, self._map, self.stride, self.padding, self.dilation, self.groups,
                          self.padding_mode, self._pad, **extra)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: BayesianConv2d is a base class; use BBBConv2d, LRConv2d "
                                  "or CLTConv2d")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"padding_mode={self.padding_mode!r}, {super().extra_repr()}")


class BBBConv2d(BayesianConv2d):
    r"""Bayes by Backprop convolution: one kernel sample per call, shared by the batch,
    ``y = conv(x, mu + sigma eps) + mu_b + sigma_b eps_b`` (CV1, C5, C6). MAP mode: ``F.conv2d`` with the means
    (C4)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return bbb_conv2d(input, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho, self._conv_config(),
                          self._noise)


class LRConv2d(BayesianConv2d):
    r"""Local reparameterization convolution: samples the output,
    ``y = conv(x, mu) + mu_b + sqrt(conv(x^2, sigma^2) + sigma_b^2) eps``, with independent noise per output
    element. Each output element has the mean and variance it has under :class:`BBBConv2d` (CV1). MAP mode:
    ``F.conv2d`` with the means (C4)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return lr_conv2d(input, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho, self._conv_config(),
                         self._noise)


class CLTConv2d(BayesianConv2d):
    r"""Moment propagation through a convolution (CV2): for an input of independent elements with mean ``mu_h``
    and variance ``var_h``,

    .. math:: m = \mathrm{conv}(\mu_h, \mu_W) + \mu_b,\qquad
              v = \mathrm{conv}(v_h + \mu_h^2, \sigma_W^2) + \mathrm{conv}(v_h, \mu_W^2) + \sigma_b^2,

    the exact moments of each pre-activation element when every input element enters its window once (zero
    padding, or a deterministic input); a reflect, replicate or circular border can repeat an element in one window,
    and there ``v`` leaves out the covariance of the repeated terms. Unless ``is_output``, the layer returns the
    moments of ReLU (or CReLU, which doubles the channels) of ``N(m, v)``, as :class:`~rln_verified.CLTLinear`.

    MAP mode: ``var_h`` must be None; returns ``(act(F.conv2d(mu_h, mu, mu_b)), None)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair = 1,
                 padding: Pair | str = 0, dilation: Pair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", prior_mean: Prior = None, prior_std: Prior = None,
                 use_softplus: bool = False, manual_reset: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, act: Act = "relu", is_input: bool = False,
                 is_output: bool = False) -> None:
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, prior_mean, prior_std, use_softplus, manual_reset, device, dtype)
        self.act: Act = act
        self.is_input = bool(is_input)
        self.is_output = bool(is_output)

    def reset_randomness(self) -> None:
        """Nothing to reset: the forward is analytic."""

    def forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return clt_conv2d(mu_h, var_h, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho,
                          self._conv_config(act=self.act, is_input=self.is_input, is_output=self.is_output,
                                            layer=type(self).__name__))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act!r}, is_input={self.is_input}, is_output={self.is_output}"


#: The conv layer classes by ``LayerType`` name.
CONV_TYPES: dict[str, type[BayesianConv2d]] = {"bbb": BBBConv2d, "lr": LRConv2d, "clt": CLTConv2d}


__all__ = ["CONV_TYPES", "PADDING_MODES", "BBBConv2d", "BayesianConv2d", "CLTConv2d", "LRConv2d"]
