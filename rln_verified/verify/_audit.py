"""``rln-verify audit``: run the generic normalization-layer checks on anyone's layer.

The user names a factory (``torch.nn:LayerNorm``) plus keyword arguments and an input shape. The
grouping (which entries are normalized together) is inferred for the layers we know (LayerNorm,
RMSNorm, GroupNorm, our layers, the seed reference) or given with ``--groups``:

``last:K``     the trailing K dims form a group (LayerNorm-like)
``channels``   each (sample, channel) plane of an (N, C, ...) input is a group (per-channel 2d layers)
``groups:G``   G channel groups times the spatial dims (GroupNorm-like)
"""

from __future__ import annotations

import ast
import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rln_verified.verify._subjects import GroupView, LayerSubject


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"bad --shape {text!r}: expected positive integers separated by commas, e.g. 8,64") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UsageError(f"bad --shape {text!r}: need a batch dim and at least one more, all positive, e.g. 8,64")
    return shape


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs; values are Python literals (``64``, ``(2, 6)``, ``1e-5``), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        for part in item.split(";") if ";" in item else [item]:
            name, sep, raw = part.partition("=")
            if not sep or not name.strip().isidentifier():
                raise UsageError(f"bad --kwargs {part!r}: expected name=value, e.g. normalized_shape=64")
            try:
                out[name.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                out[name.strip()] = raw.strip()
    return out


def load_factory(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"bad factory {spec!r}: expected MODULE:FACTORY, e.g. torch.nn:LayerNorm")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure of user code is a usage error, not a crash
        raise UsageError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


def _last(k: int) -> GroupView:
    def groups(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, math.prod(x.shape[x.ndim - k:]))

    return groups


def _planes(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], -1)


def _channel_groups(g: int) -> GroupView:
    def groups(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0] * g, -1)

    return groups


def parse_groups(text: str, shape: tuple[int, ...]) -> GroupView:
    kind, _, arg = text.partition(":")
    try:
        if kind == "last":
            k = int(arg)
            if not 1 <= k < len(shape):
                raise ValueError
            return _last(k)
        if kind == "channels" and not arg and len(shape) >= 3:
            return _planes
        if kind == "groups":
            g = int(arg)
            if g <= 0 or shape[1] % g:
                raise ValueError
            return _channel_groups(g)
    except ValueError:
        pass
    raise UsageError(f"bad --groups {text!r} for shape {shape}: use last:K, channels or groups:G (G divides C)")


def _known_facts(module: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """What the checks may assume about a layer we know: its formula, whether it centres, its gradient
    constant K (N3). An unknown layer gets nothing, and the claims that need a fact are skipped."""
    from rln_verified import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
    from rln_verified.seed import SeedBayesianRLayerNorm, SeedBayesianRLayerNorm2d, SeedRLayerNorm2d
    from rln_verified.verify.norm import rln_info

    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(module, rms):
        # ||J||_2 <= |gamma| / sqrt(mean(x^2) + eps) <= |gamma| / sqrt(v + eps): K = 1 with sigma of N3.
        return {"formula": "rmsnorm", "centred": False, "K": 1.0, "alpha": 0.0}
    if isinstance(module, nn.LayerNorm | nn.GroupNorm):
        return {"formula": "layernorm", "centred": True, "K": 1.0, "alpha": 0.0}  # N3 with b = 0
    two_d = isinstance(module, RLayerNorm2d | BayesianRLayerNorm2d | SeedRLayerNorm2d | SeedBayesianRLayerNorm2d)
    last = isinstance(module, RLayerNorm | BayesianRLayerNorm | SeedBayesianRLayerNorm)
    if not (two_d or last):
        return {}
    if two_d:
        plane = (shape[2], shape[3]) if len(shape) == 4 else (0, 0)
    else:
        ns_attr: Sequence[int] = module.normalized_shape  # type: ignore[assignment]
        ns = tuple(int(d) for d in ns_attr)
        plane = (math.prod(ns[:-1]), ns[-1])
    if plane[1] < 2 or (two_d and plane[0] < 2):
        return {}  # the layer rejects such an input; the probe reports it
    bayes = isinstance(module, BayesianRLayerNorm | BayesianRLayerNorm2d | SeedBayesianRLayerNorm
                       | SeedBayesianRLayerNorm2d)
    ours = isinstance(module, RLayerNorm | BayesianRLayerNorm | RLayerNorm2d | BayesianRLayerNorm2d)
    if ours:
        alpha = float(getattr(module, "alpha", 1.0)) if bayes else 1.0
        info = rln_info(plane, two_d, bayes, alpha=alpha, lambda_max=float(getattr(module, "lambda_max", 1.0)))
    else:
        # The seed's formulas are ours with alpha = 1 and lambda clamped to [1e-3, 1].
        info = rln_info(plane, two_d, bayes, alpha=1.0, lambda_max=1.0)
        info["lambda_of"] = lambda mod: float(mod.lam().detach())
    return info


def infer_groups(module: nn.Module, shape: tuple[int, ...]) -> tuple[GroupView, str]:
    """The grouping of a known layer, with a description; UsageError when unknown."""
    if isinstance(module, nn.GroupNorm):
        if len(shape) < 2 or shape[1] != module.num_channels:
            raise UsageError(f"--shape {shape} does not have the layer's {module.num_channels} channels in dim 1")
        return _channel_groups(module.num_groups), f"groups:{module.num_groups}"
    ns = getattr(module, "normalized_shape", None)
    if isinstance(ns, int):
        ns = (ns,)
    if isinstance(ns, tuple | list | torch.Size) and len(ns) >= 1:
        k = len(ns)
        if len(shape) <= k or tuple(shape[len(shape) - k:]) != tuple(int(d) for d in ns):
            raise UsageError(f"--shape {shape} does not end with the layer's normalized_shape {tuple(ns)} "
                             "after a batch dim")
        return _last(k), f"last:{k}"
    if len(shape) == 4 and (type(module).__name__.endswith("2d") or hasattr(module, "num_channels")):
        return _planes, "channels"
    raise UsageError(f"cannot infer how {type(module).__name__} groups its input; pass --groups last:K, channels "
                     "or groups:G")


def audit_subject(spec: str, shape: tuple[int, ...], kwargs: dict[str, Any], groups: str | None = None, *,
                  gradient_constant: float | None = None, centred: bool | None = None) -> LayerSubject:
    """A LayerSubject for a user's layer; raises UsageError on bad input.

    ``gradient_constant`` and ``centred`` state facts about a layer the audit does not know (they override
    what is known for torch's and our layers).
    """
    fn = load_factory(spec)

    def build() -> nn.Module:
        try:
            mod = fn(**kwargs)
        except Exception as exc:
            raise UsageError(f"{spec}(**{kwargs}) raised {type(exc).__name__}: {exc}") from None
        if not isinstance(mod, nn.Module):
            raise UsageError(f"{spec} returned {type(mod).__name__}, not a torch.nn.Module")
        return mod

    probe = build()
    view = parse_groups(groups, shape) if groups is not None else infer_groups(probe, shape)[0]
    try:
        with torch.no_grad():
            probe.double()(torch.randn(shape, dtype=torch.float64))
    except Exception as exc:
        raise UsageError(f"{spec} does not accept an input of shape {shape}: {type(exc).__name__}: {exc}") from None
    info = _known_facts(probe, shape)
    if gradient_constant is not None:
        if not (math.isfinite(gradient_constant) and gradient_constant >= 1.0):
            raise UsageError(f"bad --gradient-constant {gradient_constant}: need a finite K >= 1")
        info["K"] = gradient_constant
    if centred is not None:
        info["centred"] = centred
    eps = getattr(probe, "eps", None)

    def factory(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return fn(**kwargs).to(device=device, dtype=dtype)  # type: ignore[no-any-return]

    return LayerSubject(name=spec, factory=factory, shape=shape, groups=view,
                        eps=float(eps) if isinstance(eps, float | int) and not isinstance(eps, bool) else None,
                        info=info)


__all__ = ["UsageError", "audit_subject", "infer_groups", "load_factory", "parse_groups", "parse_kwargs",
           "parse_shape"]
