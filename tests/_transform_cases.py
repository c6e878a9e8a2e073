"""The subjects of the transform matrix (docs/transforms.md): every public layer and functional form, built the same way
for every transform, and the tolerances the cells compare with.

A subject is a :class:`Call` module: a public layer (or a functional form holding its non-batched tensor arguments as
parameters) whose ``forward(*inputs)`` returns a tuple of tensors, the layer's outputs with ``None`` dropped. Every
input has the batch on dim 0, and so has every output.

Determinism. Sampling layers (BBB, LR and the bbb/lr MLPs, linear and conv) run with ``manual_reset`` on and the stored
noise put in by :func:`install_noise` from a fixed generator, so the float32 module, its float64 reference, a copy, a
traced or an exported program and each DDP rank all use the same noise. LR's noise is one draw per output element (of
the output's shape), so a rank or a single sample gets the rows of the noise that belong to its rows of the batch.

Tolerances (``tol``): a normwise relative error ``max|got - ref| / max|ref|`` in units of the float32 eps. A float32
forward made of reductions of length at most ``n`` and a chain of at most 32 elementwise operations has, by the
standard summation bound, relative error about ``gamma_n + 32 u <= (n + 32) eps / 2`` per stage; a subject has
``depth`` stages (layers), and a factor 4 covers the conditioning of the final subtractions that the normwise measure
does not see, so ``k = 2 (n + 32) depth``. Each order of differentiation replaces every operation by at most three
(its backward), so the bound of the ``d``-th derivative is ``3**d k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import rln_verified as R
from rln_verified import functional as RF

SEED = 1234
NOISE_SEED = 99
EPS32 = torch.finfo(torch.float32).eps


def flatten(out: Any) -> tuple[torch.Tensor, ...]:
    """A layer's output as a tuple of tensors, ``None`` dropped."""
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(t for t in out if t is not None)


class Call(nn.Module):
    """A public layer called with fixed keyword arguments; returns a tuple of tensors."""

    def __init__(self, inner: nn.Module, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.kw = dict(kwargs or {})

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten(self.inner(*xs, **self.kw))


class Fn(nn.Module):
    """A functional form; its non-batched tensor arguments are parameters, passed after the inputs."""

    def __init__(self, fn: Callable[..., Any], params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.names = list(params)
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value))

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten(self.fn(*xs, *(getattr(self, n) for n in self.names)))


@dataclass(frozen=True)
class Subject:
    """One row of the matrix."""

    name: str
    #: builds the float32 inner module (a layer) with the factory kwargs given; None for a functional form
    ctor: Callable[..., nn.Module] | None
    #: keyword arguments of the layer's forward
    call_kw: dict[str, Any]
    #: float32 inputs from a generator: a tuple of tensors, batch on dim 0
    make_inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]]
    #: longest reduction in the forward, and the number of stacked layers (see the module docstring)
    n: int
    depth: int = 1
    #: functional forms: the function and a maker of its non-batched tensor arguments
    fn: Callable[..., Any] | None = None
    fn_params: Callable[[torch.Generator], dict[str, torch.Tensor]] | None = None
    #: layers whose forward samples: noise is put in by install_noise
    sampling: bool = False
    #: under CPU autocast: "float32" (norm layers and the functional forms keep float32, like torch's layer_norm)
    #: or "autocast" (Bayesian linear and conv layers return the autocast dtype, like nn.Linear and nn.Conv2d)
    autocast_out: str = "float32"
    #: the widest fan-in or fan-out that one rounding of a low-precision output meets (autocast tolerance)
    fan: int = 1
    #: takes the fused float32 C path (layers with >= 4096 weight elements, every float32 norm)
    fused: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def layer(self) -> bool:
        return self.ctor is not None

    def k(self, order: int = 0) -> float:
        """The float32 error bound of the ``order``-th derivative, in units of eps (module docstring)."""
        return 2.0 * (self.n + 32) * self.depth * 3.0**order


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    # Drawn in float64 and rounded once: the float64 reference then sees exactly the float32 values.
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(torch.float32)


def _pos(g: torch.Generator, *shape: int, lo: float = 0.1, hi: float = 2.0) -> torch.Tensor:
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(torch.float32)


# ---- layers -------------------------------------------------------------------------------------------------------

LAST = (4, 3, 8)  # batch 4, normalized_shape (3, 8): 3 rows of 8 per group
TWO_D = (2, 3, 5, 8)  # planes of 5 rows of 8: the kernel's row-vector path (rnorm.c)
SMALL = (8, 6)  # in, out
LARGE = (96, 64)  # 6144 weight elements >= 4096: the fused float32 path
BATCH = 4
CONV_IN = (2, 3, 6, 6)  # batch 2, 3 channels of 6x6
CONV_OUT, CONV_K = 4, 3  # 4 channels, kernel 3, padding 1: the output is (2, 4, 6, 6)


def _linear_inputs(n_in: int) -> Callable[[torch.Generator], tuple[torch.Tensor, ...]]:
    return lambda g: (_randn(g, BATCH, n_in),)


def _det_inputs(n_in: int) -> Callable[[torch.Generator], tuple[torch.Tensor, ...]]:
    return lambda g: (_randn(g, BATCH, n_in), _pos(g, BATCH, n_in, lo=0.01, hi=0.5))


def _layer_subjects() -> list[Subject]:
    out: list[Subject] = []
    uncertainty = {"return_uncertainty": True}
    last = lambda g: (_randn(g, *LAST, scale=2.0, shift=0.5),)  # noqa: E731
    two_d = lambda g: (_randn(g, *TWO_D, scale=2.0, shift=0.5),)  # noqa: E731
    out += [
        Subject("RLayerNorm", partial(R.RLayerNorm, LAST[1:]), {}, last, n=24, fused=True),
        Subject("BayesianRLayerNorm", partial(R.BayesianRLayerNorm, LAST[1:]), uncertainty, last, n=24, fused=True),
        Subject("RLayerNorm2d", partial(R.RLayerNorm2d, TWO_D[1]), {}, two_d, n=30, fused=True),
        Subject("BayesianRLayerNorm2d", partial(R.BayesianRLayerNorm2d, TWO_D[1]), uncertainty, two_d, n=30,
                fused=True),
    ]
    for size, (n_in, n_out) in (("", SMALL), ("[64x96]", LARGE)):
        big = bool(size)
        lin: dict[str, Any] = {"autocast_out": "autocast", "fan": max(n_in, n_out), "fused": big, "n": n_in}
        out += [
            Subject("BBBLinear" + size, partial(R.BBBLinear, n_in, n_out), {}, _linear_inputs(n_in), sampling=True,
                    **lin),
            Subject("LRLinear" + size, partial(R.LRLinear, n_in, n_out), {}, _linear_inputs(n_in), sampling=True,
                    **lin),
            Subject("CLTLinear" + size, partial(R.CLTLinear, n_in, n_out, is_input=True), {}, _linear_inputs(n_in),
                    **lin),
            Subject("CLTLinearDet" + size, partial(R.CLTLinearDet, n_in, n_out), {}, _det_inputs(n_in), **lin),
        ]
        width = LARGE[1] if big else 16
        for lt in ("bbb", "lr", "clt", "cltdet"):
            out.append(Subject(
                f"BayesianMLP[{lt}]" + size, partial(R.BayesianMLP, n_in, 6, depth=2, width=width, layer_type=lt), {},
                _linear_inputs(n_in), n=max(n_in, width), depth=2, sampling=lt in ("bbb", "lr"),
                autocast_out="autocast", fan=max(n_in, width), fused=big))
    out += _conv_subjects()
    return out


def _conv_subjects() -> list[Subject]:
    # Reductions: the forward sums in / groups * kH * kW = 27 products per output element; the kernel's gradient sums
    # over N * H' * W' = 72 positions, the input's over out * kH * kW = 36: n = 72, the longest. Under autocast a
    # rounded cotangent enters sums of at most those 72 terms (the kernel's gradient): fan = 72.
    n_batch, c_in, h, w = CONV_IN
    n = max(c_in * CONV_K * CONV_K, n_batch * h * w, CONV_OUT * CONV_K * CONV_K)
    conv: dict[str, Any] = {"autocast_out": "autocast", "fan": n, "n": n}
    args = (c_in, CONV_OUT, CONV_K)
    mu = lambda g: (_randn(g, *CONV_IN),)  # noqa: E731
    mu_var = lambda g: (_randn(g, *CONV_IN), _pos(g, *CONV_IN, lo=0.01, hi=0.5))  # noqa: E731
    return [
        Subject("BBBConv2d", partial(R.BBBConv2d, *args, padding=1), {}, mu, sampling=True, **conv),
        Subject("LRConv2d", partial(R.LRConv2d, *args, padding=1), {}, mu, sampling=True, **conv),
        Subject("CLTConv2d", partial(R.CLTConv2d, *args, padding=1, is_input=True), {}, mu, **conv),
        # a hidden layer: the input's variance enters both convolutions of the variance (CV2)
        Subject("CLTConv2d[var_h]", partial(R.CLTConv2d, *args, padding=1), {}, mu_var, **conv),
    ]


# ---- functional forms ---------------------------------------------------------------------------------------------

def _rln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return RF.r_layer_norm(x, LAST[1:], w, b, lam)


def _brln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> Any:
    return RF.bayesian_r_layer_norm(x, LAST[1:], w, b, lam, alpha=1.0, return_uncertainty=True)


def _rln2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return RF.r_layer_norm2d(x, w, b, lam)


def _brln2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> Any:
    return RF.bayesian_r_layer_norm2d(x, w, b, lam, alpha=1.0, return_uncertainty=True)


def _noise_ratio(x: torch.Tensor) -> torch.Tensor:
    return RF.noise_ratio(x, two_d=True)


def _affine(shape: Sequence[int]) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    def make(g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"weight": _randn(g, *shape, scale=0.3, shift=1.0), "bias": _randn(g, *shape, scale=0.3),
                "lam": torch.tensor(0.5, dtype=torch.float32)}
    return make


def _functional_subjects() -> list[Subject]:
    def fs(name: str, fn: Callable[..., Any], inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]],
           n: int = 1, params: Callable[[torch.Generator], dict[str, torch.Tensor]] | None = None) -> Subject:
        return Subject(f"F.{name}", None, {}, inputs, n=n, fn=fn, fn_params=params)

    elem = (BATCH, 5)
    return [
        fs("r_layer_norm", _rln, lambda g: (_randn(g, *LAST, scale=2.0, shift=0.5),), 24, _affine(LAST[1:])),
        fs("bayesian_r_layer_norm", _brln, lambda g: (_randn(g, *LAST, scale=2.0, shift=0.5),), 24,
           _affine(LAST[1:])),
        fs("r_layer_norm2d", _rln2d, lambda g: (_randn(g, *TWO_D, scale=2.0, shift=0.5),), 30, _affine((3,))),
        fs("bayesian_r_layer_norm2d", _brln2d, lambda g: (_randn(g, *TWO_D, scale=2.0, shift=0.5),), 30,
           _affine((3,))),
        fs("noise_ratio", _noise_ratio, lambda g: (_randn(g, *TWO_D, scale=2.0, shift=0.5),), 30),
        fs("psi", RF.psi, lambda g: (_pos(g, *elem, lo=0.01, hi=4.0),)),
        fs("softplus", RF.softplus, lambda g: (_randn(g, *elem, scale=4.0),)),
        fs("inv_softplus", RF.inv_softplus, lambda g: (_pos(g, *elem, lo=0.05, hi=4.0),)),
        fs("normal_pdf", RF.normal_pdf, lambda g: (_randn(g, *elem, scale=2.0),)),
        fs("normal_cdf", RF.normal_cdf, lambda g: (_randn(g, *elem, scale=2.0),)),
        fs("normal_logcdf", RF.normal_logcdf, lambda g: (_randn(g, *elem, scale=2.0),)),
        fs("relu_moments", RF.relu_moments, lambda g: (_randn(g, *elem, scale=2.0), _pos(g, *elem, lo=0.2))),
        fs("neg_relu_moments", RF.neg_relu_moments, lambda g: (_randn(g, *elem, scale=2.0), _pos(g, *elem, lo=0.2))),
        fs("crelu_moments", RF.crelu_moments, lambda g: (_randn(g, *elem, scale=2.0), _pos(g, *elem, lo=0.2))),
        fs("kl_normal", RF.kl_normal, lambda g: (_randn(g, *elem), _pos(g, *elem, lo=0.2), _randn(g, *elem),
                                                 _pos(g, *elem, lo=0.2))),
    ]


SUBJECTS: dict[str, Subject] = {s.name: s for s in _layer_subjects() + _functional_subjects()}


# ---- building -----------------------------------------------------------------------------------------------------

def _lr_noise_shape(m: nn.Module, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of LR's output noise (the output's) for a module input of shape ``x_shape``: ``(*batch, out)`` for a
    linear layer (every LR layer of an MLP has the batch of the MLP's input), the convolution's output for a conv layer
    (F.conv2d with the layer's arguments on meta tensors; a padding mode other than zeros pads by the same amounts)."""
    if isinstance(m, R.LRConv2d):
        x, k = torch.empty(x_shape, device="meta"), torch.empty(m.weight_mu.shape, device="meta")
        return tuple(F.conv2d(x, k, None, m.stride, m.padding, m.dilation, m.groups).shape)
    assert isinstance(m, R.LRLinear)
    return (*x_shape[:-1], m.out_features)


def install_noise(module: nn.Module, x_shape: tuple[int, ...], rows: slice | None = None) -> None:
    """Turn on manual_reset in every sampling layer of ``module`` and store fixed noise in it; ``x_shape`` is the shape
    of the module's first input.

    BBB draws one weight (and bias) noise for the whole batch; LR one noise per output element, of the output's shape
    (:func:`_lr_noise_shape`), of which ``rows`` (a slice of the batch) is kept for a shard or a single sample.
    """
    g = _g(NOISE_SEED)
    for m in module.modules():
        if not isinstance(m, R.BBBLinear | R.LRLinear | R.BBBConv2d | R.LRConv2d):
            continue
        m.set_manual_reset(True)
        dtype = m.weight_mu.dtype
        if isinstance(m, R.BBBLinear | R.BBBConv2d):
            m._random_weight = torch.randn(m.weight_mu.shape, generator=g, dtype=torch.float64).to(dtype)
            m._random_bias = (torch.randn(m.bias_mu.shape, generator=g, dtype=torch.float64).to(dtype)
                              if m.bias_mu is not None else None)
        else:
            eps = torch.randn(_lr_noise_shape(m, x_shape), generator=g, dtype=torch.float64).to(dtype)
            m._random_weight = eps if rows is None else eps[rows].contiguous()


def inputs(s: Subject, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(dtype) for t in s.make_inputs(_g(SEED + 7919 * seed)))


def build(s: Subject, dtype: torch.dtype = torch.float32, rows: slice | None = None) -> nn.Module:
    """The subject as a Call (or Fn) module in ``dtype``; the float64 build has exactly the float32 values."""
    torch.manual_seed(SEED)
    if s.ctor is not None:
        mod: nn.Module = Call(s.ctor(), s.call_kw)
    else:
        assert s.fn is not None
        mod = Fn(s.fn, s.fn_params(_g(SEED + 1)) if s.fn_params is not None else {})
    mod = mod.to(dtype)
    if s.sampling:
        install_noise(mod, tuple(inputs(s)[0].shape), rows)
    return mod


def cotangents(outs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Fixed cotangents shaped like ``outs`` (float64 draws rounded to float32, then to each output's dtype)."""
    g = _g(SEED + 31)
    return tuple(torch.randn(o.shape, generator=g, dtype=torch.float64).to(torch.float32).to(o.dtype) for o in outs)


def scalar_loss(outs: Sequence[torch.Tensor], cots: Sequence[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), dtype=outs[0].dtype)
    for o, c in zip(outs, cots, strict=True):
        total = total + (o * c.to(o.dtype)).sum()
    return total


def concat(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([o.reshape(-1) for o in outs])


# ---- comparison ---------------------------------------------------------------------------------------------------

def close(what: str, got: torch.Tensor, ref: torch.Tensor, tol: float, how: str = "") -> None:
    """Normwise relative comparison ``max|got - ref| <= tol * max|ref|`` (with a floor of the smallest normal); the
    failure message names the worst element. NaN or inf where the reference is finite fails."""
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    g64, r64 = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(g64).all() and torch.isfinite(r64).all():
        raise AssertionError(f"{what}: non-finite values where the reference is finite")
    if r64.numel() == 0:
        return
    diff = (g64 - r64).abs()
    scale = max(float(r64.abs().max()), torch.finfo(torch.float32).tiny)
    worst = int(diff.reshape(-1).argmax())
    err = float(diff.reshape(-1)[worst]) / scale
    if not err <= tol:
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), r64.shape))
        raise AssertionError(
            f"{what}: normwise relative error {err:.3g} > tol {tol:.3g} ({how}); worst at {idx}: "
            f"got {float(g64.reshape(-1)[worst]):.9g}, expected {float(r64.reshape(-1)[worst]):.9g}, "
            f"max|ref| {scale:.3g}"
        )


def close_all(what: str, got: Sequence[torch.Tensor | None], ref: Sequence[torch.Tensor | None], tol: float,
              how: str = "") -> None:
    if len(got) != len(ref):
        raise AssertionError(f"{what}: {len(got)} tensors, expected {len(ref)}")
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        if b is None:
            continue
        if a is None:
            raise AssertionError(f"{what}[{i}]: None, expected a tensor (a gradient that should exist is missing)")
        close(f"{what}[{i}]", a, b, tol, how)


def sqrt_fan(s: Subject) -> float:
    return math.sqrt(s.fan)


__all__ = [
    "EPS32", "SEED", "SUBJECTS", "Call", "Fn", "Subject", "build", "close", "close_all", "concat", "cotangents",
    "flatten", "inputs", "install_noise", "scalar_loss", "sqrt_fan",
]
