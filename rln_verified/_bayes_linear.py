"""Bayesian linear layers with ObjectRL's API: BBB, local reparameterization, CLT moment propagation.

Theorems C1-C6 in ``proofs/bayesian_linear.md``. Every defect of the public implementation that the
issue lists is fixed here and pinned by ``tests/test_objectrl_regressions.py``.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rln_verified._gaussian import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._special import inv_softplus, softplus

#: Initial posterior std of every weight and bias (ObjectRL's choice, rho = -4.6 there).
INIT_STD = 0.01

Prior = int | float | torch.Tensor | None
LayerType = Literal["bbb", "lr", "clt", "cltdet"]
Act = Literal["relu", "crelu"]


def std_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """The range ``[tiny**(1/4), max**(1/8)]`` the posterior std is kept in (C6).

    Below: ``sigma**2 >= sqrt(tiny)``, so the variance and its products with inputs of size >= tiny**(1/4)
    stay normal. Above: ``sigma**2 <= max**(1/4)``, so ``x**2 sigma**2`` summed over a layer stays finite
    for ``|x| <= max**(1/4) / sqrt(fan_in)``, and the KL's ``t = (sigma/s)**2 - 1`` keeps ``t**2`` finite
    for every prior std ``s >= max**(-1/8)``. float32: ``[3.3e-10, 6.5e4]``; float64: ``[1.2e-77, 3.4e38]``.
    float16 and bfloat16 use the float32 range (their std is computed in float32 and cast back).
    """
    fi = torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    return float(fi.tiny) ** 0.25, float(fi.max) ** 0.125


def _safe_sqrt(var: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (C6).

    ``clamp_min(tiny)`` moves only inputs below the smallest normal ``tiny``, by at most
    ``sqrt(tiny)`` in the result (1.1e-19 in float32, 1.5e-154 in float64), far below any std the
    layers produce. Below ``tiny`` the gradient is 0, the true derivative of the std of a variance
    that is identically 0 (at a zero input, d sqrt(sum x_j^2 s_j^2)/d rho = 0); at ``tiny`` it is
    ``1/(2 sqrt(tiny))``, finite.
    """
    return torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _prior_tensor(value: Prior, name: str, default: float, weight_shape: tuple[int, int],
                  factory_kwargs: dict[str, Any]) -> torch.Tensor:
    """An int, float, 0-d tensor, one-element tensor or weight-shaped tensor, as a buffer of shape
    ``(1,)`` or ``weight_shape``. Anything else raises a ``ValueError`` naming what arrived."""
    if value is None:
        return torch.full((1,), default, **factory_kwargs)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be an int, a float or a tensor, got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        return torch.full((1,), float(value), **factory_kwargs)
    if value.is_complex():
        raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}")
    t = value.detach().to(**{k: v for k, v in factory_kwargs.items() if v is not None})
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype() if factory_kwargs.get("dtype") is None else factory_kwargs["dtype"])
    if t.dim() == 0 or tuple(t.shape) == (1,) or (t.numel() == 1 and tuple(t.shape) == weight_shape):
        # One number (also a (1, 1) prior of a 1-to-1 layer): shared by the weights and the bias.
        return t.reshape(1).clone()
    if tuple(t.shape) == weight_shape:
        return t.clone()
    raise ValueError(
        f"{name} must be a scalar, a one-element tensor or weight-shaped {weight_shape}, got shape {tuple(t.shape)}"
    )


def _check_prior_values(mean: torch.Tensor, std: torch.Tensor) -> None:
    # Reads the data once, at construction or update_prior, never in forward.
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("prior_mean must be finite")
    if not bool(((std > 0) & torch.isfinite(std)).all()):
        raise ValueError(f"prior_std must be > 0 and finite everywhere, got min {float(std.min())}")


def _check_features(in_features: object, out_features: object) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if not _is_int(v) or int(v) < 1:  # type: ignore[call-overload]
            raise ValueError(f"{name} must be a positive int, got {v!r}")


class BayesianLinear(ABC, nn.Module):
    r"""Abstract base of the Bayesian linear layers: a factorized Gaussian posterior over weights.

    .. math::
        W_{ij} \sim N(\mu_{ij}, \sigma_{ij}^2),\quad \sigma = e^{\rho}\ \text{or}\ \mathrm{softplus}(\rho),
        \qquad \mathrm{KL} = \sum_{ij} KL(N(\mu_{ij}, \sigma_{ij}^2)\,\|\,N(m_{ij}, s_{ij}^2)) + \text{bias terms}.

    ``sigma`` is kept in :func:`std_bounds` (``rho`` outside it is saturated, gradient 0), so it is > 0
    and finite for every finite ``rho`` (C6). The KL is a sum over all weights and biases; divide by the
    number of training points yourself for a minibatch ELBO (C1).

    Args:
        in_features, out_features: sizes (positive ints).
        bias: learn a bias posterior ``bias_mu``, ``bias_rho`` (registered as None when False).
        prior_mean, prior_std: int, float, 0-d or one-element tensor (shared by weights and biases),
            or a weight-shaped ``(out, in)`` tensor (the weights' prior; the biases then keep N(0, 1)).
            Default N(0, 1). ``prior_std <= 0`` raises ``ValueError``.
        use_softplus: ``sigma = softplus(rho)`` instead of ``exp(rho)``.
        manual_reset: keep the sampled noise from call to call until :meth:`reset_randomness` (C5).
        device, dtype: factory arguments.

    Raises:
        ValueError: bad sizes, a prior of the wrong shape, a non-positive or non-finite prior std.
    """

    in_features: int
    out_features: int
    _map: bool = False
    #: Subclasses without learned std (CLTLinearDet) set this False: rho is then registered as None.
    _learn_std: ClassVar[bool] = True

    weight_rho: nn.Parameter | None
    bias_mu: nn.Parameter | None
    bias_rho: nn.Parameter | None
    prior_mean: torch.Tensor
    prior_std: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_mean: Prior = None,
        prior_std: Prior = None,
        use_softplus: bool = False,
        manual_reset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        _check_features(in_features, out_features)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_softplus = bool(use_softplus)
        self._manual_reset = bool(manual_reset)
        self._random_weight: torch.Tensor | None = None
        self._random_bias: torch.Tensor | None = None
        shape = (self.out_features, self.in_features)
        self.weight_mu = nn.Parameter(torch.empty(shape, **factory_kwargs))
        if self._learn_std:
            self.weight_rho = nn.Parameter(torch.empty(shape, **factory_kwargs))
        else:
            self.register_parameter("weight_rho", None)
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(self.out_features, **factory_kwargs))
            if self._learn_std:
                self.bias_rho = nn.Parameter(torch.empty(self.out_features, **factory_kwargs))
            else:
                self.register_parameter("bias_rho", None)
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        pm = _prior_tensor(prior_mean, "prior_mean", 0.0, shape, pkw)
        ps = _prior_tensor(prior_std, "prior_std", 1.0, shape, pkw)
        _check_prior_values(pm, ps)
        self.register_buffer("prior_mean", pm)
        self.register_buffer("prior_std", ps)
        self.reset_parameters()

    # ---- configuration ----------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """ObjectRL's initialization: Kaiming-uniform weight means (``a = sqrt 5``, as ``nn.Linear``),
        bias means uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, and ``rho`` set so that every std
        starts at exactly ``INIT_STD = 0.01`` (``log 0.01`` or ``inv_softplus(0.01)``)."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        rho0 = self._rho_of(INIT_STD)
        if self.weight_rho is not None:
            nn.init.constant_(self.weight_rho, rho0)
        if self.bias_mu is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias_mu, -bound, bound)
        if self.bias_rho is not None:
            nn.init.constant_(self.bias_rho, rho0)
        self._random_weight = None
        self._random_bias = None

    def _rho_of(self, std: float) -> float:
        if self.use_softplus:
            return float(inv_softplus(torch.tensor(std, dtype=torch.float64)))
        return math.log(std)

    def reset_randomness(self) -> None:
        """Forget the stored noise: the next forward draws fresh noise (C5).

        Raises:
            ValueError: ``manual_reset`` is off (the noise is then fresh on every call anyway).
        """
        if not self._manual_reset:
            raise ValueError(f"{type(self).__name__}.reset_randomness needs manual_reset=True; "
                             "call set_manual_reset() first")
        self._random_weight = None
        self._random_bias = None

    def set_manual_reset(self, manual_reset: bool = True) -> None:
        self._manual_reset = bool(manual_reset)
        if not self._manual_reset:
            self._random_weight = None
            self._random_bias = None

    def get_manual_reset(self) -> bool:
        return self._manual_reset

    def map(self, on: bool = True) -> None:
        """Maximum a posteriori mode: forward uses the means only and is deterministic (C4)."""
        self._map = bool(on)

    def update_prior(self, prior_mean: Prior, prior_std: Prior) -> None:
        """Replace the prior (same accepted forms and checks as the constructor)."""
        shape = (self.out_features, self.in_features)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        pm = _prior_tensor(prior_mean, "prior_mean", 0.0, shape, pkw)
        ps = _prior_tensor(prior_std, "prior_std", 1.0, shape, pkw)
        _check_prior_values(pm, ps)
        self.prior_mean = pm
        self.prior_std = ps

    softplus = staticmethod(softplus)
    inv_softplus = staticmethod(inv_softplus)

    # ---- posterior ------------------------------------------------------------------------------------

    def _std_of(self, rho: torch.Tensor) -> torch.Tensor:
        lo, hi = std_bounds(rho.dtype)
        if self.use_softplus:
            r = rho.clamp(float(inv_softplus(torch.tensor(lo, dtype=torch.float64))), hi)
            return softplus(r)
        return torch.exp(rho.clamp(math.log(lo), math.log(hi)))

    def mean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight_mu, bias_mu)``."""
        return self.weight_mu, self.bias_mu

    def std(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w, sigma_b)``, each ``exp(rho)`` or ``softplus(rho)`` inside :func:`std_bounds` (C6)."""
        if self.weight_rho is None:
            raise ValueError(f"{type(self).__name__} has no learned standard deviation (weight_rho is None)")
        sb = self._std_of(self.bias_rho) if self.bias_rho is not None else None
        return self._std_of(self.weight_rho), sb

    def var(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w**2, sigma_b**2)``."""
        sw, sb = self.std()
        return sw.square(), (sb.square() if sb is not None else None)

    def KL(self) -> tuple[torch.Tensor, int]:
        """``(sum of KL(posterior || prior) over weights and biases, number of weight and bias elements)`` (C1)."""
        wm, bm = self.mean()
        ws, bs = self.std()
        kl = kl_normal(wm, ws, self.prior_mean.expand_as(wm), self.prior_std.expand_as(wm)).sum()
        n = wm.numel()
        if bm is not None and bs is not None:
            if self.prior_mean.numel() == 1 and self.prior_std.numel() == 1:
                pm, ps = self.prior_mean.expand_as(bm), self.prior_std.expand_as(bm)
            else:  # a weight-shaped prior covers the weights only; biases keep N(0, 1)
                pm = self.prior_mean.new_zeros(bm.shape) if self.prior_mean.numel() != 1 \
                    else self.prior_mean.expand_as(bm)
                ps = self.prior_std.new_ones(bm.shape) if self.prior_std.numel() != 1 \
                    else self.prior_std.expand_as(bm)
            kl = kl + kl_normal(bm, bs, pm, ps).sum()
            n += bm.numel()
        return kl, n

    def _noise(self, attr: str, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like``; kept between calls under manual_reset (C5)."""
        stored: torch.Tensor | None = getattr(self, attr)
        if self._manual_reset and stored is not None:
            if stored.shape != like.shape:
                raise ValueError(
                    f"{type(self).__name__}: manual_reset keeps noise of shape {tuple(stored.shape)}, but this call "
                    f"needs {tuple(like.shape)}; call reset_randomness() before changing the batch shape"
                )
            return stored
        eps = torch.randn_like(like)
        setattr(self, attr, eps if self._manual_reset else None)
        return eps

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_mu is not None}, "
                f"use_softplus={self.use_softplus}, manual_reset={self._manual_reset}")


class BBBLinear(BayesianLinear):
    r"""Bayes by Backprop (Blundell et al., 2015): one weight sample per call, shared by the batch.

    .. math:: W = \mu + \sigma\odot\varepsilon,\ \varepsilon\sim N(0, I),\qquad y = x W^\top + b.

    MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        wm, bm = self.mean()
        if self._map:
            return F.linear(input, wm, bm)
        ws, bs = self.std()
        w = torch.addcmul(wm, ws, self._noise("_random_weight", wm))
        b = torch.addcmul(bm, bs, self._noise("_random_bias", bm)) if bm is not None and bs is not None else None
        return F.linear(input, w, b)


class LRLinear(BayesianLinear):
    r"""Local reparameterization (Kingma et al., 2015): samples the pre-activations.

    .. math:: y = x\mu^\top + \mu_b + \sqrt{x^2 (\sigma^2)^\top + \sigma_b^2}\odot\varepsilon,\ \varepsilon\sim N(0, I).

    Same output mean and variance as :class:`BBBLinear` for each output element (C2); independent
    noise per batch row. The square root has a finite gradient at zero variance (C6).
    MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        wm, bm = self.mean()
        out_mu = F.linear(input, wm, bm)
        if self._map:
            return out_mu
        wv, bv = self.var()
        out_std = _safe_sqrt(F.linear(input.square(), wv, bv))
        return torch.addcmul(out_mu, out_std, self._noise("_random_weight", out_mu))


class CReLU(nn.Module):
    """Concatenated ReLU: ``cat([relu(x), relu(-x)], dim=-1)`` (doubles the last dimension)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(input), F.relu(-input)], dim=-1)


class CLTLinear(BayesianLinear):
    r"""Moment propagation under a Gaussian (CLT) approximation (Wu et al., 2019; Haussmann, 2021).

    For an input with independent elements of mean ``mu_h`` and variance ``var_h``:

    .. math::
        m = \mu_h\mu_W^\top + \mu_b,\qquad
        v = (v_h + \mu_h^2)(\sigma_W^2)^\top + v_h(\mu_W^2)^\top + \sigma_b^2

    (``var_h = None``: a deterministic input, ``v = mu_h^2 sigma_W^2 + sigma_b^2``), exact moments of the
    pre-activation (C3). Unless ``is_output``, the layer returns the mean and variance of
    ``relu`` (or CReLU) of ``N(m, v)`` from :func:`rln_verified.functional.relu_moments`.

    MAP mode (ObjectRL's contract): ``var_h`` must be None; returns ``(act(F.linear(mu_h, weight_mu,
    bias_mu)), None)``, without the activation when ``is_output``.

    Raises:
        ValueError: ``act`` not in {"relu", "crelu"} (at construction); in forward, a variance in MAP
            mode or a missing variance for a non-input layer.
    """

    normal_cdf = staticmethod(normal_cdf)
    normal_pdf = staticmethod(normal_pdf)
    relu_moments = staticmethod(relu_moments)
    neg_relu_moments = staticmethod(neg_relu_moments)
    crelu_moments = staticmethod(crelu_moments)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_mean: Prior = None,
        prior_std: Prior = None,
        use_softplus: bool = False,
        manual_reset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        act: Act = "relu",
        is_input: bool = False,
        is_output: bool = False,
    ) -> None:
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        super().__init__(in_features, out_features, bias, prior_mean, prior_std, use_softplus, manual_reset,
                         device, dtype)
        self.act: Act = act
        self.is_input = bool(is_input)
        self.is_output = bool(is_output)

    def reset_randomness(self) -> None:
        """Nothing to reset: the forward is analytic (ObjectRL raises NotImplementedError here)."""

    def _activate_map(self, m: torch.Tensor) -> torch.Tensor:
        if self.is_output:
            return m
        if self.act == "relu":
            return F.relu(m)
        return torch.cat([F.relu(m), F.relu(-m)], dim=-1)

    def _activate(self, m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_output:
            return m, v
        s = _safe_sqrt(v)
        return relu_moments(m, s) if self.act == "relu" else crelu_moments(m, s)

    def _check_call(self, var_h: torch.Tensor | None) -> None:
        if self._map and var_h is not None:
            raise ValueError(f"{type(self).__name__}: var_h must be None in MAP mode (the MAP forward is "
                             "deterministic), got a tensor")

    def forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_call(var_h)
        wm, bm = self.mean()
        m = F.linear(mu_h, wm, bm)
        if self._map:
            return self._activate_map(m), None
        if var_h is None and not self.is_input:
            raise ValueError(f"{type(self).__name__}: var_h is required for a non-input layer outside MAP mode "
                             "(set is_input=True for a deterministic input)")
        wv, bv = self.var()
        if var_h is None:
            v = F.linear(mu_h.square(), wv, bv)
        else:
            v = F.linear(var_h + mu_h.square(), wv, bv) + F.linear(var_h, wm.square())
        return self._activate(m, v)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act!r}, is_input={self.is_input}, is_output={self.is_output}"


class CLTLinearDet(CLTLinear):
    r"""CLT layer with deterministic weights: no learned std (``weight_rho``, ``bias_rho`` are None).

    Propagates an input variance through the squared means, ``v = v_h (\mu_W^2)^\top``; with
    ``var_h = None`` the output variance is None and the layer is ``act(F.linear(...))``.
    :meth:`std`, :meth:`var` and :meth:`KL` raise ``ValueError``.
    """

    _learn_std: ClassVar[bool] = False

    def var(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise ValueError(f"{type(self).__name__} has no learned standard deviation, so no variance")

    def KL(self) -> tuple[torch.Tensor, int]:
        raise ValueError(f"{type(self).__name__} has deterministic weights, so no KL divergence")

    def forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_call(var_h)
        wm, bm = self.mean()
        m = F.linear(mu_h, wm, bm)
        if self._map or var_h is None:
            return self._activate_map(m), None
        return self._activate(m, F.linear(var_h, wm.square()))


_LAYERS: dict[str, type[BayesianLinear]] = {"bbb": BBBLinear, "lr": LRLinear, "clt": CLTLinear,
                                            "cltdet": CLTLinearDet}


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
            a CLT layer type (or with ``width < 2``).
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
        if layer_type not in _LAYERS:
            raise ValueError(f"layer_type must be one of {sorted(_LAYERS)}, got {layer_type!r}")
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        for name, v in (("depth", depth), ("width", width), ("dim_in", dim_in), ("dim_out", dim_out)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.layer_type: LayerType = layer_type
        self.act: Act = act
        self.is_clt = layer_type in ("clt", "cltdet")
        if has_norm and self.is_clt:
            raise ValueError("has_norm is not available for CLT layers: a normalization of a random vector has no "
                             "closed-form moments to propagate; use layer_type 'bbb' or 'lr'")
        if has_norm and width < 2:
            raise ValueError(f"has_norm needs width >= 2 (R-LayerNorm's window), got {width}")
        self.has_norm = bool(has_norm)
        mult = 2 if act == "crelu" else 1
        dims = [dim_in] + [width] * (depth - 1) + [dim_out]
        ins = [dim_in] + [width * mult] * (depth - 1)
        cls = _LAYERS[layer_type]
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
                    from rln_verified._layers import BayesianRLayerNorm

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


__all__ = [
    "INIT_STD",
    "BBBLinear",
    "BayesianLinear",
    "BayesianMLP",
    "CLTLinear",
    "CLTLinearDet",
    "CReLU",
    "LRLinear",
    "std_bounds",
]
