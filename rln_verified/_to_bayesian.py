"""Convert a trained model's ``nn.Linear`` and ``nn.Conv2d`` layers into Bayesian layers: ``to_bayesian``.

The posterior means start at the trained weights and biases, so the converted model in MAP mode computes the
original model's function bit for bit (C4: MAP mode is ``F.linear``/``F.conv2d`` with the means). The posterior
stds start at the layers' ``INIT_STD``, or with MOPED (Krishnan et al., 2020) at ``delta * |w|`` for each weight
and bias, kept inside ``std_bounds`` (C6).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from rln_verified._bayesian_conv import CONV_TYPES
from rln_verified._bayesian_linear import LAYER_TYPES, BayesianLayer, LayerType, Prior
from rln_verified._bayesian_std import std_bounds
from rln_verified._special import inv_softplus
from rln_verified._tools import unwrap_compiled

#: The torch layers ``to_bayesian`` converts, by exact type (a subclass may change the forward, or its parent may
#: read its weight directly, as ``nn.MultiheadAttention`` reads ``out_proj.weight``).
CONVERTIBLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class Converted(NamedTuple):
    """One converted layer: its qualified name, the torch type it had and the Bayesian type it has now."""

    name: str
    old: type[nn.Module]
    new: type[nn.Module]


class Kept(NamedTuple):
    """One module left as it was: its qualified name, its type and why it was not converted."""

    name: str
    type: type[nn.Module]
    reason: str


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`to_bayesian` did: every converted layer and every module it left alone, in ``named_modules``
    order. A container whose children were visited is in neither list; a module held under two names is listed
    once, under the first."""

    converted: tuple[Converted, ...]
    kept: tuple[Kept, ...]

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)}:"]
        lines += [f"  {c.name}: {c.old.__name__} -> {c.new.__name__}" for c in self.converted]
        lines.append(f"kept {len(self.kept)}:")
        lines += [f"  {k.name}: {k.type.__name__} ({k.reason})" for k in self.kept]
        return "\n".join(lines)


def _check_prior(value: Prior, name: str) -> None:
    """A model-wide prior is one number: a kernel-shaped tensor fits one layer only."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"to_bayesian: {name} must be one number (an int, a float or a one-element tensor) for the "
                         f"whole model, got a tensor of shape {tuple(value.shape)}; set per-layer priors after the "
                         "conversion with layer.update_prior(prior_mean, prior_std)")


def _check_moped(moped: float | None) -> float | None:
    if moped is None:
        return None
    if isinstance(moped, bool) or not isinstance(moped, numbers.Real):
        raise TypeError(f"to_bayesian: moped must be None or a real number delta > 0, got {type(moped).__name__}")
    delta = float(moped)
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"to_bayesian: moped (delta, the std as a fraction of |w|) must be finite and > 0, "
                         f"got {delta}")
    return delta


def _where(name: str) -> str:
    return repr(name) if name else "the model itself"


def _check_convertible(name: str, m: nn.Linear | nn.Conv2d) -> None:
    """Raise where the Bayesian layer could not compute what ``m`` computes: hooks it would not carry, parameters
    other than ``weight`` and ``bias`` (old-style weight_norm), mixed dtypes or devices, a conv option it lacks."""
    hooks = [h for h in _HOOKS if getattr(m, h, None)]
    if hooks:
        raise ValueError(
            f"to_bayesian: {_where(name)} ({type(m).__name__}) has hooks ({', '.join(hooks)}; weight_norm and "
            "spectral_norm are hooks too) that the new Bayesian layer would not carry; remove them, or pass the "
            "module's name in skip"
        )
    params = sorted(n for n, _ in m.named_parameters(recurse=False))
    if not isinstance(m._parameters.get("weight"), nn.Parameter) or not set(params) <= {"weight", "bias"}:
        raise ValueError(
            f"to_bayesian: {_where(name)} ({type(m).__name__}) has the parameters {params}, not weight and bias; "
            "a reparameterized weight (old-style weight_norm) has no single trained value to start the posterior "
            "from. Remove the reparameterization, or pass the module's name in skip"
        )
    w, b = m.weight, m.bias
    if b is not None and (b.dtype != w.dtype or b.device != w.device):
        raise ValueError(f"to_bayesian: {_where(name)} has a weight of {w.dtype} on {w.device} and a bias of "
                         f"{b.dtype} on {b.device}; a Bayesian layer holds one dtype and device")
    if not w.is_floating_point():
        raise ValueError(f"to_bayesian: {_where(name)} has a weight of dtype {w.dtype}; a Bayesian layer needs a "
                         "floating-point one")
    if isinstance(m, nn.Conv2d):
        if m.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"to_bayesian: {_where(name)} has padding_mode {m.padding_mode!r}, which the Bayesian "
                             "convolutions do not have; pass the module's name in skip")
        if m.transposed or any(p != 0 for p in m.output_padding):
            raise ValueError(f"to_bayesian: {_where(name)} is a transposed convolution, which the Bayesian "
                             "convolutions are not; pass the module's name in skip")


def _rho(std: torch.Tensor, use_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    """``rho`` with ``std == exp(rho)`` (or ``softplus(rho)``), computed in float64 and rounded once to ``dtype``."""
    s = std.to(torch.float64)
    return (inv_softplus(s) if use_softplus else torch.log(s)).to(dtype)


def _build(name: str, m: nn.Linear | nn.Conv2d, layer_type: str, prior_mean: Prior, prior_std: Prior,
           use_softplus: bool, delta: float | None) -> BayesianLayer:
    w: torch.Tensor = m.weight
    b: torch.Tensor | None = m.bias
    new: BayesianLayer
    if isinstance(m, nn.Linear):
        new = LAYER_TYPES[layer_type](m.in_features, m.out_features, bias=b is not None, prior_mean=prior_mean,
                                      prior_std=prior_std, use_softplus=use_softplus, device=w.device, dtype=w.dtype)
    else:
        padding = m.padding if isinstance(m.padding, str) else (int(m.padding[0]), int(m.padding[1]))
        conv = CONV_TYPES[layer_type](
            m.in_channels, m.out_channels, (int(m.kernel_size[0]), int(m.kernel_size[1])),
            stride=(int(m.stride[0]), int(m.stride[1])), padding=padding,
            dilation=(int(m.dilation[0]), int(m.dilation[1])), groups=m.groups, bias=b is not None,
            padding_mode=m.padding_mode, prior_mean=prior_mean, prior_std=prior_std, use_softplus=use_softplus,
            device=w.device, dtype=w.dtype)
        if m.padding_mode != "zeros" and tuple(conv._pad) != tuple(m._reversed_padding_repeated_twice):
            raise ValueError(f"to_bayesian: {_where(name)} pads by {tuple(m._reversed_padding_repeated_twice)} "
                             f"(left, right, top, bottom), which the Bayesian convolution (padding {conv._pad}) "
                             "cannot express; pass the module's name in skip")
        new = conv
    lo, hi = std_bounds(w.dtype)
    with torch.no_grad():
        for src, mu, rho in ((w, new.weight_mu, new.weight_rho), (b, new.bias_mu, new.bias_rho)):
            if src is None or mu is None:
                continue
            mu.copy_(src)
            mu.requires_grad_(src.requires_grad)
            assert rho is not None  # BBB and LR layers learn their std
            if delta is not None:
                if not src.is_meta and not bool(torch.isfinite(src).all()):
                    raise ValueError(f"to_bayesian: {_where(name)} has non-finite weights or biases, so MOPED's "
                                     "std delta * |w| is undefined; fix the model, or convert without moped")
                rho.copy_(_rho((delta * src.to(torch.float64).abs()).clamp(lo, hi), use_softplus, rho.dtype))
            rho.requires_grad_(src.requires_grad)
    if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
        new = new.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    new.train(m.training)
    return new


def to_bayesian(
    model: nn.Module,
    layer_type: LayerType = "bbb",
    *,
    prior_mean: Prior = None,
    prior_std: Prior = None,
    moped: float | None = None,
    use_softplus: bool = False,
    skip: Iterable[str | type[nn.Module]] = (),
    include: Iterable[str] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    r"""Turn every ``nn.Linear`` and ``nn.Conv2d`` of a trained model into a Bayesian layer that starts at the
    trained weights.

    Each converted layer's posterior means are the trained weight and bias, copied; so the converted model in MAP
    mode (``layer.map(True)`` on every :class:`~rln_verified.BayesianLayer`) computes the original model's output
    bit for bit (C4). The posterior stds start at ``INIT_STD`` (0.01) or, with ``moped=delta``, at
    ``delta * |w|`` per weight and bias (MOPED, Krishnan et al. 2020), clamped into
    :func:`~rln_verified._bayesian_std.std_bounds` (a zero weight gets the lower bound) and stored as ``rho`` of
    the layer's own parameterization (``log`` or inverse softplus, computed in float64 and rounded once). The new
    layers keep the device, dtype, training mode and ``requires_grad`` of the old ones (``rho`` follows the
    weight's), and a channels-last kernel stays channels-last.

    Only modules whose type is exactly ``nn.Linear`` or ``nn.Conv2d`` are converted. A subclass (the
    ``out_proj`` of ``nn.MultiheadAttention``, whose parent reads its weight directly; a parametrized or an
    uninitialized lazy layer) is left alone and reported. Nothing is skipped silently: the report lists every
    converted layer and every module left alone, with the reason.

    ``layer_type`` ``"clt"`` and ``"cltdet"`` raise ``ValueError``: a CLT layer takes and returns
    ``(mean, var)`` and holds the ReLU itself, so the model's other modules (activations, norms, pooling) would
    receive pairs; it is not a drop-in replacement. Build a :class:`~rln_verified.BayesianMLP` with
    ``layer_type="clt"``, or wire :class:`~rln_verified.CLTLinear`/:class:`~rln_verified.CLTConv2d` yourself.

    Args:
        model: the trained model (or a single ``nn.Linear``/``nn.Conv2d``: the new layer is returned).
        layer_type: ``"bbb"`` (:class:`~rln_verified.BBBLinear`, :class:`~rln_verified.BBBConv2d`) or ``"lr"``
            (:class:`~rln_verified.LRLinear`, :class:`~rln_verified.LRConv2d`).
        prior_mean, prior_std: one number (int, float or one-element tensor) for every layer; default N(0, 1).
            Per-layer priors: ``layer.update_prior`` after the conversion.
        moped: ``None`` (stds ``INIT_STD``) or ``delta > 0``: every std starts at ``delta * |w|``.
        use_softplus: the new layers' parameterization, ``softplus(rho)`` instead of ``exp(rho)``.
        skip: qualified module names (as ``model.named_modules()`` gives them; a container skips its whole
            subtree) and module types (``isinstance``) to leave alone.
        include: ``None`` converts every ``nn.Linear``/``nn.Conv2d`` not skipped; a list of names converts exactly
            those modules, each of which must be an ``nn.Linear`` or ``nn.Conv2d``.
        inplace: convert ``model`` itself; by default a deep copy is converted and ``model`` is untouched.

    Returns:
        ``(converted_model, report)``: the model (``model`` itself when ``inplace``, else the copy; the new layer
        when ``model`` is itself a layer that was converted) and a :class:`ConversionReport`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; an ``include`` name is a module of another type; a ``skip``
            entry is neither a string nor an ``nn.Module`` subclass; ``moped`` not a real number; a compiled
            (``torch.compile``) module in the model.
        ValueError: an unknown ``layer_type`` or a CLT one; a ``skip``/``include`` name that is no module of the
            model, a name in both, or an ``include`` name under a ``skip``; a prior that is not one number;
            ``moped`` not finite and > 0; a layer to convert that has hooks, extra parameters, a weight tied to
            another module, mixed dtypes, or conv options the Bayesian convolutions lack; non-finite weights with
            ``moped``. Every check runs before any module is replaced.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        >>> bnet, report = to_bayesian(net, "lr", moped=0.1)
        >>> [(c.name, c.new.__name__) for c in report.converted]
        [('0', 'LRConv2d'), ('3', 'LRLinear')]
        >>> [(k.name, k.reason) for k in report.kept][:1]
        [('1', 'not nn.Linear or nn.Conv2d')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_bayesian: expected an nn.Module, got {type(model).__name__}")
    if layer_type in ("clt", "cltdet"):
        raise ValueError(
            f"to_bayesian: layer_type {layer_type!r} is not a drop-in replacement: CLT layers take and return "
            "(mean, var) and hold the ReLU inside, so the model's other modules would receive pairs. Use 'bbb' or "
            "'lr', or build a BayesianMLP(layer_type='clt') / wire CLTLinear and CLTConv2d layers yourself"
        )
    if layer_type not in ("bbb", "lr"):
        raise ValueError(f"to_bayesian: layer_type must be 'bbb' or 'lr', got {layer_type!r}")
    _check_prior(prior_mean, "prior_mean")
    _check_prior(prior_std, "prior_std")
    delta = _check_moped(moped)

    all_names = dict(model.named_modules(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for n, m in all_names.items():
        names_of.setdefault(id(m), []).append(n)
    for name, m in all_names.items():
        if unwrap_compiled(m) is not m:
            raise TypeError(f"to_bayesian: {_where(name)} is a torch.compile'd module; convert the uncompiled "
                            "model, then compile the result")
    skip_names: set[str] = set()
    skip_types: list[type[nn.Module]] = []
    for s in skip:
        if isinstance(s, str):
            if s not in all_names:
                raise ValueError(f"to_bayesian: skip names {s!r}, which is no module of the model "
                                 f"(names as model.named_modules() gives them)")
            skip_names.add(s)
        elif isinstance(s, type) and issubclass(s, nn.Module):
            skip_types.append(s)
        else:
            raise TypeError(f"to_bayesian: skip takes module names (str) and nn.Module subclasses, got {s!r}")
    include_names: set[str] | None = None
    if include is not None:
        if isinstance(include, str):
            raise TypeError("to_bayesian: include must be a list of module names, not one string")
        include_names = set()
        for n in include:
            if not isinstance(n, str):
                raise TypeError(f"to_bayesian: include takes module names (str), got {n!r}")
            if n not in all_names:
                raise ValueError(f"to_bayesian: include names {n!r}, which is no module of the model")
            if type(all_names[n]) not in CONVERTIBLE:
                raise TypeError(f"to_bayesian: include names {n!r}, a {type(all_names[n]).__name__}; only "
                                "modules of type nn.Linear or nn.Conv2d (not subclasses) can be converted")
            if n in skip_names:
                raise ValueError(f"to_bayesian: {n!r} is both in include and in skip")
            include_names.add(n)

    # Plan on the given model (names and checks), then convert the copy: copy.deepcopy keeps the module tree's
    # shape, so the plan's names address the same modules there.
    converted: list[Converted] = []
    kept: list[Kept] = []
    plan: list[str] = []
    seen: set[int] = set()

    def visit(name: str, m: nn.Module) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        if name in skip_names:
            kept.append(Kept(name, type(m), "skipped by name"))
            return
        hit = next((t for t in skip_types if isinstance(m, t)), None)
        if hit is not None:
            kept.append(Kept(name, type(m), f"skipped by type {hit.__name__}"))
            return
        if isinstance(m, (nn.Linear, nn.Conv2d)) and type(m) in CONVERTIBLE:
            if include_names is not None and include_names.isdisjoint(names_of[id(m)]):
                kept.append(Kept(name, type(m), "not in include"))
                return
            _check_convertible(name, m)
            plan.append(name)
            return
        if isinstance(m, CONVERTIBLE):
            base = next(t for t in CONVERTIBLE if isinstance(m, t))
            kept.append(Kept(name, type(m), f"a subclass of nn.{base.__name__}, whose forward or use may differ"))
            return
        children = list(m.named_children())
        if not children:
            reason = "already Bayesian" if isinstance(m, BayesianLayer) else "not nn.Linear or nn.Conv2d"
            kept.append(Kept(name, type(m), reason))
        for child_name, child in children:
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    if include_names is not None:  # a name the walk never reached lies under a skip: say so, never drop it
        reached = {id(all_names[n]) for n in plan}
        for n in sorted(include_names):
            if id(all_names[n]) not in reached:
                raise ValueError(f"to_bayesian: include names {n!r}, but skip leaves it (or a module holding it) "
                                 "alone; remove it from one of the two")

    # A trained weight held by a second module (weight tying) would be untied by the conversion.
    owners: dict[int, list[str]] = {}
    for mname, mod in all_names.items():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(mname)
    for n in plan:
        mod = all_names[n]
        assert isinstance(mod, (nn.Linear, nn.Conv2d))
        for p in (mod.weight, mod.bias):
            others = [o for o in owners.get(id(p), []) if all_names[o] is not mod] if p is not None else []
            if others:
                raise ValueError(f"to_bayesian: {_where(n)} shares a parameter with {others[0]!r} (tied weights); "
                                 "the conversion would untie them. Pass one of the names in skip")

    target = model if inplace else copy.deepcopy(model)
    target_names = dict(target.named_modules(remove_duplicate=False))
    new_of: dict[int, BayesianLayer] = {}
    for n in plan:
        old = target_names[n]
        assert isinstance(old, (nn.Linear, nn.Conv2d))
        new = _build(n, old, layer_type, prior_mean, prior_std, use_softplus, delta)
        new_of[id(old)] = new
        converted.append(Converted(n, type(old), type(new)))
    if id(target) in new_of:
        return new_of[id(target)], ConversionReport(tuple(converted), tuple(kept))
    for mod in list(target.modules()):
        for child_name, child in list(mod._modules.items()):  # every name: named_children() drops repeats
            if child is not None and id(child) in new_of:
                setattr(mod, child_name, new_of[id(child)])
    return target, ConversionReport(tuple(converted), tuple(kept))


__all__ = ["CONVERTIBLE", "ConversionReport", "Converted", "Kept", "to_bayesian"]
