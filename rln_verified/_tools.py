"""Model-level tools: collect the uncertainty of every Bayesian norm layer, and convert torch norm layers.

``forward_with_uncertainty`` makes the seed's quick start (``model(x, return_uncertainty=True)`` on an
``nn.Sequential``) work in our form: the layers are asked for ``u`` through hooks, and the model itself is called
unchanged. ``replace_norm_layers`` swaps torch's per-group norm layers for ours, copying the affine; with the
Bayesian layers at ``alpha = 0`` the converted layers compute the same function (N6 in proofs/norm.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rln_verified._norm_layers import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d


def _bayesian_norm_types() -> tuple[type[nn.Module], ...]:
    return (BayesianRLayerNorm, BayesianRLayerNorm2d)


def _is_compiled_wrapper(module: nn.Module) -> bool:
    """True for the ``OptimizedModule`` that ``torch.compile(module)`` returns (its original is ``_orig_mod``).
    Without ``torch._dynamo`` loaded nothing can have been compiled, so dynamo is never imported here."""
    if "torch._dynamo" not in sys.modules:
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule)


def _compiled_in_place(module: nn.Module) -> bool:
    """True for a module compiled in place by ``module.compile()``: its ``__call__`` runs the compiled call."""
    return getattr(module, "_compiled_call_impl", None) is not None


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped (through any number of wrappers), or ``model`` itself."""
    while _is_compiled_wrapper(model):
        inner = model._orig_mod
        assert isinstance(inner, nn.Module)
        model = inner
    return model


@contextmanager
def _eager_calls(model: nn.Module) -> Iterator[None]:
    """Inside, every module of ``model`` compiled in place (``module.compile()``) runs its eager call; the
    compiled calls are put back on exit, also when the body raises."""
    saved = [(m, m._compiled_call_impl) for m in model.modules() if _compiled_in_place(m)]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


def forward_with_uncertainty(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``model(*args, **kwargs)`` and collect ``u`` from every Bayesian R-LayerNorm layer inside it.

    Each Bayesian norm layer is called with ``return_uncertainty=True`` (a forward pre-hook sets it), its ``u``
    is recorded under the layer's qualified name (``model.named_modules()``), and the hook hands only ``y`` on,
    so the model sees exactly what it would see without this function. A layer that the model itself calls with
    ``return_uncertainty=True`` keeps returning ``(y, u)``. A layer called more than once gets the keys
    ``name``, ``name#1``, ``name#2``, ... in call order. Hooks are removed on return, also when the forward raises.

    Compiled models: a compiled graph does not see hooks added after it was compiled (dynamo skips guards on
    module hooks, ``torch._dynamo.config.skip_nnmodule_hook_guards``, so a cached graph would run without them and
    report no ``u``). So on ``torch.compile(model)``
    this function runs the original module (``_orig_mod``) eagerly, and a module compiled in place
    (``module.compile()``) runs its eager call for this one forward: the output and every ``u`` are those of the
    eager model with the same parameters, and the keys are the original module's names (no ``_orig_mod.``
    prefix). A ``torch.compile``'d submodule holding Bayesian norm layers inside an uncompiled model raises
    ``ValueError``: compile the whole model instead, or pass the uncompiled one.

    Args:
        model: any module; layers other than ``BayesianRLayerNorm``/``BayesianRLayerNorm2d`` are untouched.
        *args: passed to ``model``.
        **kwargs: passed to ``model``.

    Returns:
        ``(output, {qualified_name: u})``; ``u`` is keepdim, so it broadcasts against that layer's output.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rln_verified import BayesianRLayerNorm2d
        >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), BayesianRLayerNorm2d(16), nn.ReLU())
        >>> y, us = forward_with_uncertainty(model, torch.randn(2, 3, 8, 8))
        >>> tuple(us["1"].shape)
        (2, 16, 1, 1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_with_uncertainty: expected an nn.Module, got {type(model).__name__}")
    kinds = _bayesian_norm_types()
    model = unwrap_compiled(model)
    for name, module in model.named_modules():
        if _is_compiled_wrapper(module) and any(isinstance(m, kinds) for m in module.modules()):
            raise ValueError(
                f"forward_with_uncertainty: submodule {name!r} is a torch.compile'd module holding Bayesian "
                "R-LayerNorm layers, and its compiled graph cannot report their u. Compile the whole model "
                "(torch.compile(model)) or pass the uncompiled model"
            )
    found: dict[str, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def store(name: str, u: torch.Tensor) -> None:
        key, k = name, 0
        while key in found:
            k += 1
            key = f"{name}#{k}"
        found[key] = u

    for name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        asked: list[bool] = []  # per call: did the caller ask for (y, u) itself? (a stack, for re-entrant calls)

        def pre(mod: nn.Module, a: tuple[Any, ...], kw: dict[str, Any],
                asked: list[bool] = asked) -> tuple[tuple[Any, ...], dict[str, Any]]:
            user = bool(kw.get("return_uncertainty", False)) or (len(a) > 1 and bool(a[1]))
            asked.append(user)
            if len(a) > 1:  # return_uncertainty given positionally
                return (a[0], True, *a[2:]), kw
            return a, {**kw, "return_uncertainty": True}

        def post(mod: nn.Module, a: tuple[Any, ...], out: Any, name: str = name, asked: list[bool] = asked) -> Any:
            user = asked.pop()
            y, u = out
            store(name, u)
            return out if user else y

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post))
    try:
        with _eager_calls(model):
            output = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return output, found


def _factory_kwargs(module: nn.Module) -> dict[str, Any]:
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        return {"device": t.device, "dtype": t.dtype}
    return {}


def _copy_affine(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "bias"):
            a = getattr(src, name, None)
            b = getattr(dst, name, None)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                b.copy_(a.reshape(b.shape))
                b.requires_grad_(a.requires_grad)


def replace_norm_layers(
    model: nn.Module,
    *,
    bayesian: bool = True,
    alpha: float = 1.0,
    group_norm: bool = False,
    instance_norm: bool = False,
    lambda_init: float = 0.5,
    lambda_min: float = 1e-3,
    lambda_max: float = 1.0,
) -> nn.Module:
    """Swap torch's norm layers for R-LayerNorm layers, in place, copying eps and the affine parameters.

    - ``nn.LayerNorm(shape)`` becomes ``BayesianRLayerNorm(shape)`` (or ``RLayerNorm`` with ``bayesian=False``).
    - With ``group_norm=True``, ``nn.GroupNorm(C, C)`` (one group per channel) becomes
      ``BayesianRLayerNorm2d(C)``; a GroupNorm with fewer groups than channels is a different grouping and is
      left as it is.
    - With ``instance_norm=True``, ``nn.InstanceNorm2d(C)`` becomes ``BayesianRLayerNorm2d(C)`` (the affine is
      copied when it has one). One that tracks running statistics normalizes with them in eval mode, which no
      R-LayerNorm does, so it raises ``ValueError``.

    A compiled model (``torch.compile(model)``) is converted inside: its next call recompiles. Where
    ``torch.compile`` was applied to a norm layer itself, ``TypeError`` is raised before anything changes.

    The new layers keep the device, dtype and training mode of the old ones (a layer with neither parameters nor
    buffers takes the model's first parameter's or buffer's, else the defaults). Every new layer is built before
    any is swapped in, so a layer that cannot be converted raises ``ValueError`` naming it and leaves the model
    unchanged. The 2d layers take 4-D input only. With ``bayesian=True`` and ``alpha=0`` every converted layer
    computes the function of the layer it replaces (N6 in proofs/norm.md).

    Returns:
        ``model`` (or the new layer, when ``model`` itself is a converted norm layer).

    Example:
        >>> from torch import nn
        >>> m = replace_norm_layers(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), alpha=0.0)
        >>> type(m[1]).__name__
        'BayesianRLayerNorm'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_norm_layers: expected an nn.Module, got {type(model).__name__}")

    def converts(m: nn.Module) -> bool:
        return (isinstance(m, nn.LayerNorm)
                or (group_norm and isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels)
                or (instance_norm and isinstance(m, nn.InstanceNorm2d)))

    for name, module in model.named_modules():
        # torch.compile(layer) calls the layer it wrapped, whatever its _orig_mod later holds: refuse before any
        # layer is swapped. (A compiled model whose layers sit deeper recompiles on the swap: dynamo guards it.)
        if _is_compiled_wrapper(module) and converts(module._orig_mod):
            raise TypeError(
                f"replace_norm_layers: {name or 'model'} is torch.compile applied to the norm layer itself, and "
                "the compiled module would keep calling the old layer. Convert the uncompiled layer or model, then "
                "compile it"
            )
    extra: dict[str, Any] = {"lambda_init": lambda_init, "lambda_min": lambda_min, "lambda_max": lambda_max}
    if bayesian:
        extra["alpha"] = alpha
    last_cls: type[nn.Module] = BayesianRLayerNorm if bayesian else RLayerNorm
    two_d_cls: type[nn.Module] = BayesianRLayerNorm2d if bayesian else RLayerNorm2d

    # a layer with neither parameters nor buffers (no affine) takes the model's dtype and device
    model_fk: dict[str, Any] = {}
    for t in (*model.parameters(), *model.buffers()):
        model_fk = {"device": t.device, "dtype": t.dtype}
        break

    def build_new(name: str, m: nn.Module) -> nn.Module | None:
        try:
            return convert(name, m)
        except (ValueError, TypeError) as exc:
            if str(exc).startswith("replace_norm_layers:"):
                raise
            raise type(exc)(f"replace_norm_layers: cannot convert {name or 'model'} ({m!r}): {exc}") from None

    def convert(name: str, m: nn.Module) -> nn.Module | None:
        fk = _factory_kwargs(m) or model_fk
        new: nn.Module | None = None
        if isinstance(m, nn.LayerNorm):
            eps = float(m.eps)
            new = last_cls(m.normalized_shape, eps=eps, elementwise_affine=m.elementwise_affine,
                           bias=m.bias is not None, **fk, **extra)
        elif group_norm and isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels:
            new = two_d_cls(m.num_channels, eps=float(m.eps), affine=m.affine, **fk, **extra)
        elif instance_norm and isinstance(m, nn.InstanceNorm2d):
            if m.track_running_stats:
                raise ValueError(
                    f"replace_norm_layers: {name or 'model'} is an InstanceNorm2d with track_running_stats=True; "
                    "it normalizes with running statistics in eval mode, which R-LayerNorm does not. Convert one "
                    "with track_running_stats=False, or leave instance_norm=False"
                )
            new = two_d_cls(m.num_features, eps=float(m.eps), affine=m.affine, **fk, **extra)
        if new is not None:
            _copy_affine(m, new)
            new.train(m.training)
        return new

    swaps: list[tuple[nn.Module, str, nn.Module]] = []

    def walk(prefix: str, parent: nn.Module) -> None:
        for child_name, child in list(parent.named_children()):
            qual = f"{prefix}.{child_name}" if prefix else child_name
            new = build_new(qual, child)
            if new is not None:
                swaps.append((parent, child_name, new))
            else:
                walk(qual, child)

    root = build_new("", model)
    if root is not None:
        return root
    walk("", model)  # every new layer is built before any is swapped in: an error leaves the model as it was
    for parent, child_name, new in swaps:
        setattr(parent, child_name, new)
    return model


__all__ = ["forward_with_uncertainty", "replace_norm_layers", "unwrap_compiled"]
