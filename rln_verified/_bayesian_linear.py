"""Bayesian linear layers with ObjectRL's API: BBB, local reparameterization, CLT moment propagation.

Theorems C1-C6 in ``proofs/bayesian_linear.md``. The defects of ObjectRL's implementation are fixed here and pinned by
``tests/test_objectrl_regressions.py``.

Each layer's ``forward`` is one call of its functional entry in ``_bayesian_ops`` (``bbb_linear``, ``lr_linear``,
``clt_linear``, ``clt_linear_det``), which holds MAP mode, the autocast policy and the choice of path: the single
autograd nodes with hand-written backwards where they may run, else the plain forms (under ``torch.func``), with the
kernels as ``torch.library`` operators under ``torch.compile``/``torch.export``/``torch.jit.trace`` and for float32
CUDA in eager mode. The layers hold the parameters, the prior and the noise kept under ``manual_reset`` (C5).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rln_verified._bayesian_ops import (
    Act,
    MomentConfig,
    SampleConfig,
    bbb_linear,
    clt_linear,
    clt_linear_det,
    lr_linear,
)
from rln_verified._bayesian_std import INIT_STD, posterior_std
from rln_verified._dispatch import under_func_transform, unwrap_constant
from rln_verified._gaussian import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._special import inv_softplus, softplus

Prior = int | float | torch.Tensor | None
LayerType = Literal["bbb", "lr", "clt", "cltdet"]


def is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _prior_number(value: Prior, name: str, default: float) -> float | None:
    """The prior as a checked python float (None for a tensor), before any tensor exists: a mean must be finite,
    a std finite and > 0."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be an int, a float or a tensor, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        return None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if name == "prior_std" and not v > 0:
        raise ValueError(f"prior_std must be > 0 and finite everywhere, got {v}")
    return v


def _prior_tensor(value: Prior, name: str, default: float, weight_shape: tuple[int, ...],
                  factory_kwargs: dict[str, Any]) -> torch.Tensor:
    """An int, float, 0-d tensor, one-element tensor or weight-shaped tensor, as a buffer of shape
    ``(1,)`` or ``weight_shape``. Anything else raises a ``ValueError`` naming what arrived."""
    number = _prior_number(value, name, default)
    if number is not None:
        return torch.full((1,), number, **factory_kwargs)
    assert isinstance(value, torch.Tensor)
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
    # Reads the data once, at construction or update_prior, never in forward. A meta tensor has no data: its check
    # is skipped (python-number priors were checked before any tensor existed; see BayesianLinear).
    if mean.is_meta or std.is_meta:
        return
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("prior_mean must be finite")
    if not bool(((std > 0) & torch.isfinite(std)).all()):
        raise ValueError(f"prior_std must be > 0 and finite everywhere, got min {float(std.min())}")


def _check_features(in_features: object, out_features: object) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if not is_int(v) or int(v) < 1:  # type: ignore[call-overload]
            raise ValueError(f"{name} must be a positive int, got {v!r}")


class BayesianLayer(nn.Module):
    r"""Base of every Bayesian layer, linear and conv: a factorized Gaussian posterior over a weight tensor of any
    shape and a bias vector, with its prior, ``KL()``, ``std()``, MAP mode and the noise kept under ``manual_reset``
    (C1, C4-C6). ``forward`` raises NotImplementedError here. Subclasses call ``__init__`` with the weight's shape,
    the number of biases and the fan-in (which sets the bias means' initial range).
    """

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
        weight_shape: tuple[int, ...],
        bias_features: int,
        fan_in: int,
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
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self._fan_in = int(fan_in)
        self.use_softplus = bool(use_softplus)
        self._manual_reset = bool(manual_reset)
        self._random_weight: torch.Tensor | None = None
        self._random_bias: torch.Tensor | None = None
        shape = tuple(weight_shape)
        self.weight_mu = nn.Parameter(torch.empty(shape, **factory_kwargs))
        if self._learn_std:
            self.weight_rho = nn.Parameter(torch.empty(shape, **factory_kwargs))
        else:
            self.register_parameter("weight_rho", None)
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(bias_features, **factory_kwargs))
            if self._learn_std:
                self.bias_rho = nn.Parameter(torch.empty(bias_features, **factory_kwargs))
            else:
                self.register_parameter("bias_rho", None)
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        self._prior_fill = (_prior_number(prior_mean, "prior_mean", 0.0), _prior_number(prior_std, "prior_std", 1.0))
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
            bound = 1.0 / math.sqrt(self._fan_in)
            nn.init.uniform_(self.bias_mu, -bound, bound)
        if self.bias_rho is not None:
            nn.init.constant_(self.bias_rho, rho0)
        # Number priors are state too (after to_empty their buffers hold garbage); tensor priors are kept.
        fill_m, fill_s = getattr(self, "_prior_fill", (None, None))
        with torch.no_grad():
            if fill_m is not None and hasattr(self, "prior_mean"):
                self.prior_mean.fill_(fill_m)
            if fill_s is not None and hasattr(self, "prior_std"):
                self.prior_std.fill_(fill_s)
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

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Inside the block the layer samples: MAP mode and ``manual_reset`` are off, so every call draws fresh
        noise. On exit, also when the block raises, the MAP mode, ``manual_reset`` and any stored noise are put
        back as they were."""
        saved = (self._map, self._manual_reset, self._random_weight, self._random_bias)
        self.map(False)
        self.set_manual_reset(False)
        try:
            yield
        finally:
            self._map, self._manual_reset, self._random_weight, self._random_bias = saved

    def update_prior(self, prior_mean: Prior, prior_std: Prior) -> None:
        """Replace the prior (same accepted forms and checks as the constructor)."""
        shape = tuple(self.weight_mu.shape)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        fill = (_prior_number(prior_mean, "prior_mean", 0.0), _prior_number(prior_std, "prior_std", 1.0))
        pm = _prior_tensor(prior_mean, "prior_mean", 0.0, shape, pkw)
        ps = _prior_tensor(prior_std, "prior_std", 1.0, shape, pkw)
        _check_prior_values(pm, ps)
        self._prior_fill = fill
        self.prior_mean = pm
        self.prior_std = ps

    softplus = staticmethod(softplus)
    inv_softplus = staticmethod(inv_softplus)

    # ---- posterior ------------------------------------------------------------------------------------

    def _std_of(self, rho: torch.Tensor, square: bool = False) -> torch.Tensor:
        return posterior_std(rho, self.use_softplus, square)

    def mean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight_mu, bias_mu)``."""
        return self.weight_mu, self.bias_mu

    def _check_unsharded(self, what: str) -> None:
        """Outside forward, FSDP2 (``fully_shard`` on this layer) leaves each parameter a DTensor holding one rank's
        shard, and the priors plain tensors: refuse with the way out instead of a mixed-tensor error from torch."""
        if "torch.distributed.tensor" not in sys.modules:  # nothing can be a DTensor
            return
        from torch.distributed.tensor import DTensor

        if isinstance(self.weight_mu, DTensor):
            raise TypeError(
                f"{type(self).__name__}.{what}(): the parameters are sharded (DTensor: fully_shard was applied to "
                "this layer), and outside forward each rank holds a shard. Compute it inside the model's forward, "
                "where FSDP2 gathers them, or after the layer's unshard() (then reshard())"
            )

    def std(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w, sigma_b)``, each ``exp(rho)`` or ``softplus(rho)`` inside :func:`std_bounds` (C6); float32 on
        CPU the exp is the fused kernel's, within 0.99 ulp (EXP-1)."""
        if self.weight_rho is None:
            raise ValueError(f"{type(self).__name__} has no learned standard deviation (weight_rho is None)")
        self._check_unsharded("std")
        sb = self._std_of(self.bias_rho) if self.bias_rho is not None else None
        return self._std_of(self.weight_rho), sb

    def var(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w**2, sigma_b**2)``, the squares of :meth:`std` bit for bit."""
        if self.weight_rho is None:
            raise ValueError(f"{type(self).__name__} has no learned standard deviation (weight_rho is None)")
        self._check_unsharded("var")
        sb = self._std_of(self.bias_rho, square=True) if self.bias_rho is not None else None
        return self._std_of(self.weight_rho, square=True), sb

    def KL(self) -> tuple[torch.Tensor, int]:
        """``(sum of KL(posterior || prior) over weights and biases, number of weight and bias elements)`` (C1)."""
        self._check_unsharded("KL")
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

    def _noise(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Standard normal noise for ``slot`` ("weight" or "bias"); kept between calls under manual_reset (C5).
        The layers' ``_bayesian_ops.Noise``."""
        attr = "_random_" + slot
        stored: torch.Tensor | None = getattr(self, attr)
        if self._manual_reset and stored is not None:
            if tuple(stored.shape) != shape and under_func_transform():
                raise ValueError(
                    f"{type(self).__name__}: manual_reset keeps noise of shape {tuple(stored.shape)}, but under a "
                    f"torch.func transform (vmap over samples: per-sample gradients) each call needs {shape}, and "
                    "which stored row belongs to which sample is unknown; for per-sample gradients use "
                    "manual_reset=False (fresh noise per call), map mode, or vmap over a leading dimension that "
                    "keeps the batch shape"
                )
            if tuple(stored.shape) != shape:
                raise ValueError(
                    f"{type(self).__name__}: manual_reset keeps noise of shape {tuple(stored.shape)}, but this call "
                    f"needs {shape}; call reset_randomness() before changing the batch shape"
                )
            return stored
        eps = torch.randn(shape, dtype=dtype, device=device)
        if self._manual_reset:  # otherwise the slot stays None (reset_parameters, set_manual_reset(False))
            # drawn inside a torch.func transform: keep the plain values (grad, jacrev, vmap with
            # randomness="same"); a vmap with randomness="different" draws one per sample, which cannot be kept
            kept = unwrap_constant(eps)
            if kept is None:
                raise ValueError(
                    f"{type(self).__name__}: manual_reset has no stored noise, and the noise drawn under this "
                    "torch.func transform (vmap with randomness='different') is per sample and cannot be kept "
                    "after it; call the layer once outside the transform to store the noise (then vmap over a "
                    "leading dimension that keeps the batch shape), or use manual_reset=False (fresh noise per call)"
                )
            setattr(self, attr, kept)
        return eps

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> BayesianLayer:
        # .to(), .half(), .cuda(), to_empty(), ...: the noise kept under manual_reset follows the parameters' dtype
        # and device, values kept (it is not a buffer, so that checkpoints and DDP's buffer broadcast leave it
        # alone). fn itself is not applied to it: to_empty's fn would hand back uninitialized memory. Noise on meta
        # has no values to move: it is dropped, and the next call draws it again.
        old_dtype = self.weight_mu.dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        dtype, device = self.weight_mu.dtype, self.weight_mu.device
        for attr in ("_random_weight", "_random_bias"):
            t = getattr(self, attr)
            if t is None:
                continue
            if t.is_meta and device.type != "meta":
                setattr(self, attr, None)
            else:
                setattr(self, attr, t.to(device=device, dtype=dtype if t.dtype == old_dtype else t.dtype))
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: BayesianLayer is a base class; use a Bayesian linear or "
                                  "conv layer")

    def extra_repr(self) -> str:
        return f"bias={self.bias_mu is not None}, use_softplus={self.use_softplus}, manual_reset={self._manual_reset}"


class BayesianLinear(BayesianLayer):
    r"""Base of the Bayesian linear layers (``forward`` raises NotImplementedError here; no ABC metaclass, so that
    FSDP2's ``fully_shard`` can derive its class from a layer's): a factorized Gaussian posterior over weights.

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

    ``device="meta"``: the layer is built without data. Priors given as numbers (or the default) are checked as
    numbers and refilled by :meth:`reset_parameters`, so ``to_empty(device=...)`` then ``reset_parameters()`` gives
    a working layer. A tensor prior on meta cannot be checked (it has no values) and is not refilled: set it with
    :meth:`update_prior` after ``to_empty``.

    Raises:
        ValueError: bad sizes, a prior of the wrong shape, a non-positive or non-finite prior std.
    """

    in_features: int
    out_features: int

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
        _check_features(in_features, out_features)
        super().__init__((int(out_features), int(in_features)), int(out_features), int(in_features), bias,
                         prior_mean, prior_std, use_softplus, manual_reset, device, dtype)
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: BayesianLinear is a base class; use BBBLinear, LRLinear, "
                                  "CLTLinear or CLTLinearDet")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"


class BBBLinear(BayesianLinear):
    r"""Bayes by Backprop (Blundell et al., 2015): one weight sample per call, shared by the batch.

    .. math:: W = \mu + \sigma\odot\varepsilon,\ \varepsilon\sim N(0, I),\qquad y = x W^\top + b.

    The sample is one node (:class:`BBBSample`, the values of ``F.linear(x, addcmul(mu, std(), eps), ...)``; C5,
    C6, EXP-1). MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return bbb_linear(input, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho,
                          SampleConfig(self.use_softplus, self._map), self._noise)


class LRLinear(BayesianLinear):
    r"""Local reparameterization (Kingma et al., 2015): samples the pre-activations.

    .. math:: y = x\mu^\top + \mu_b + \sqrt{x^2 (\sigma^2)^\top + \sigma_b^2}\odot\varepsilon,\ \varepsilon\sim N(0, I).

    Same output mean and variance as :class:`BBBLinear` for each output element (C2); independent
    noise per batch row. The square root has a finite gradient at zero variance (C6). The sample is one node
    (:class:`LRSample`, the values of the ``F.linear`` form; EXP-1).
    MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return lr_linear(input, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho,
                         SampleConfig(self.use_softplus, self._map), self._noise)


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
    ``relu`` (or CReLU) of ``N(m, v)`` from :func:`rln_verified.functional.relu_moments` with
    ``sigma = sqrt(clamp_min(v, tiny))``. The moments (and, float32 on CPU, the activation: RELU-6) are one node,
    :class:`CLTPreact`, with the values of the ``F.linear`` form.

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

    def _config(self) -> MomentConfig:
        return MomentConfig(self.use_softplus, self._map, self.act, self.is_input, self.is_output, type(self).__name__)

    def forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return clt_linear(mu_h, var_h, self.weight_mu, self.bias_mu, self.weight_rho, self.bias_rho, self._config())

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
        return clt_linear_det(mu_h, var_h, self.weight_mu, self.bias_mu, self._config())


#: The layer classes by ``LayerType`` name.
LAYER_TYPES: dict[str, type[BayesianLinear]] = {"bbb": BBBLinear, "lr": LRLinear, "clt": CLTLinear,
                                                "cltdet": CLTLinearDet}


__all__ = ["LAYER_TYPES", "Act", "BBBLinear", "BayesianLayer", "BayesianLinear", "CLTLinear", "CLTLinearDet", "CReLU",
           "LRLinear", "LayerType", "Prior", "is_int"]
