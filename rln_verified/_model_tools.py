"""Model-level tools: collect uncertainties from every Bayesian norm layer, and swap norm layers in."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rln_verified._rln_layers import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d

_BAYES = (BayesianRLayerNorm, BayesianRLayerNorm2d)


def forward_with_uncertainty(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``model(*args, **kwargs)`` and collect ``u`` from every Bayesian R-LayerNorm inside it.

    Returns ``(output, {qualified_name: u})``. Works for any container (``nn.Sequential`` included), since
    the layers are reached through forward hooks rather than through ``forward``'s signature. ``u`` keeps
    autograd history, so it can enter a loss.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_with_uncertainty: expected an nn.Module, got {type(model).__name__}")
    found: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str, layer: BayesianRLayerNorm | BayesianRLayerNorm2d) -> Any:
        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            # Recompute u from the same input through the same kernel (cheap: per-group statistics).
            _, u = layer._forward(inputs[0])
            found[name] = u

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, _BAYES):
            handles.append(mod.register_forward_hook(make_hook(name or type(mod).__name__, mod)))
    try:
        out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, found


def _copy_affine(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "bias"):
            s_val, d_val = getattr(src, name, None), getattr(dst, name, None)
            if isinstance(s_val, torch.Tensor) and isinstance(d_val, torch.Tensor):
                d_val.copy_(s_val.reshape(d_val.shape))


def replace_norm_layers(
    model: nn.Module,
    *,
    bayesian: bool = True,
    alpha: float = 1.0,
    group_norm: bool = False,
    instance_norm: bool = False,
    **layer_kwargs: Any,
) -> nn.Module:
    """Swap norm layers for R-LayerNorm layers in place and return the model.

    ``nn.LayerNorm`` always becomes ``(Bayesian)RLayerNorm``; with ``group_norm=True``, ``nn.GroupNorm(C, C)``
    (one group per channel) becomes ``(Bayesian)RLayerNorm2d(C)``; with ``instance_norm=True``,
    ``nn.InstanceNorm2d(affine=True)`` does too. Affine parameters, eps, device and dtype are copied. With
    ``alpha=0`` (Bayesian) the converted model computes the same outputs as the original (N6).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_norm_layers: expected an nn.Module, got {type(model).__name__}")
    for name, child in list(model.named_children()):
        new: nn.Module | None = None
        if isinstance(child, nn.LayerNorm):
            p = child.weight if child.weight is not None else None
            fk: dict[str, Any] = {"device": p.device, "dtype": p.dtype} if p is not None else {}
            cls_ld = BayesianRLayerNorm if bayesian else RLayerNorm
            extra: dict[str, Any] = {"alpha": alpha} if bayesian else {}
            new = cls_ld(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine,
                         bias=child.bias is not None, **fk, **extra, **layer_kwargs)
        elif (group_norm and isinstance(child, nn.GroupNorm) and child.num_groups == child.num_channels) or (
            instance_norm and isinstance(child, nn.InstanceNorm2d) and child.affine
        ):
            c = child.num_channels if isinstance(child, nn.GroupNorm) else child.num_features
            p2 = getattr(child, "weight", None)
            fk2: dict[str, Any] = {"device": p2.device, "dtype": p2.dtype} if isinstance(p2, torch.Tensor) else {}
            cls_2d = BayesianRLayerNorm2d if bayesian else RLayerNorm2d
            extra2: dict[str, Any] = {"alpha": alpha} if bayesian else {}
            new = cls_2d(c, eps=child.eps, **fk2, **extra2, **layer_kwargs)
        if new is not None:
            _copy_affine(child, new)
            setattr(model, name, new)
        else:
            replace_norm_layers(child, bayesian=bayesian, alpha=alpha, group_norm=group_norm,
                                instance_norm=instance_norm, **layer_kwargs)
    return model


__all__ = ["forward_with_uncertainty", "replace_norm_layers"]
