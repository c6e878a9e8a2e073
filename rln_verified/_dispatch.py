"""Which path a kernel call takes, shared by every kernel family.

Three paths compute the same formulas:

- the **fused eager** path: a plain eager call on CPU float32 tensors runs the C kernel through a Python
  ``autograd.Function`` (the cheapest call);
- the **operator** path: the same C kernel registered as a ``torch.library`` custom operator, taken whenever
  something records or transforms the call (``torch.compile``, ``torch.export``, ``torch.jit.trace``, fake and meta
  tensors), so that the tracer sees one opaque op with a shape function instead of a ctypes call it cannot see;
- the **differentiable eager** path: plain torch operations, which every torch transform understands to every
  order. ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``hessian``) run it, and so does any backward
  asked to build a graph (``create_graph=True``): see :func:`recompute_vjp`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as _forward_ad

_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_interpreters = torch._C._functorch.peek_interpreter_stack


def forward_ad_active() -> bool:
    """True inside ``torch.autograd.forward_ad.dual_level()`` (eager forward-mode AD): the custom autograd Functions
    have no ``jvp``, so the plain forms run, which forward AD differentiates like any torch code."""
    return int(getattr(_forward_ad, "_current_level", -1)) >= 0


def under_func_transform(*tensors: torch.Tensor | None) -> bool:
    """True when a ``torch.func`` transform (vmap, grad, jacrev, jvp, hessian) or eager forward-mode AD
    (:func:`forward_ad_active`) is active, whether or not it wraps these tensors (a layer's parameters are not wrapped
    under ``vmap`` over its input). Not for use while ``torch.compile`` traces (check :func:`recording` first)."""
    if _interpreters() is not None or forward_ad_active():
        return True
    for t in tensors:  # a loop, not any(...): this runs on every layer call  # noqa: SIM110
        if t is not None and _wrapped(t):
            return True
    return False


_onnx_flags: Any
try:  # the dynamo exporter's flag, read directly: dynamo folds torch.onnx.is_in_onnx_export() to False
    from torch.onnx._internal.exporter import _flags as _onnx_flags
except ImportError:  # older torch: only the TorchScript exporter, which is_in_onnx_export() covers
    _onnx_flags = None


def onnx_exporting() -> bool:
    """True while ``torch.onnx.export`` traces the call (either exporter, strict or not): custom operators have no
    ONNX lowering there, so the kernels run their plain formulas, or refuse where ONNX cannot express them
    accurately."""
    if _onnx_flags is not None and bool(getattr(_onnx_flags, "_is_onnx_exporting", False)):
        return True
    return bool(torch.onnx.is_in_onnx_export())


def jit_tracing() -> bool:
    """True while ``torch.jit.trace`` records the call."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined, no-untyped-call]


def recording() -> bool:
    """True while ``torch.compile``/``torch.export`` trace the call or ``torch.jit.trace`` records it."""
    return torch.compiler.is_compiling() or jit_tracing()


def unwrap_constant(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` with every ``torch.func`` wrapper taken off (a value made inside a transform, such as noise, that does
    not depend on its inputs), or None when a ``vmap`` level batches it (one value per sample, which exists only
    inside that transform)."""
    while _wrapped(t):
        if torch._C._functorch.is_batchedtensor(t):
            return None
        t = torch._C._functorch.get_unwrapped(t)
    return t


def is_wrapped(t: torch.Tensor) -> bool:
    """True for a tensor that a ``torch.func`` transform wraps (its data is not a plain buffer)."""
    return bool(_wrapped(t))


def plain_f32(*tensors: torch.Tensor | None) -> bool:
    """Every tensor given is a float32 CPU tensor not wrapped by ``torch.func``, and no eager forward-mode AD is
    active (:func:`forward_ad_active`); ``None`` counts as fine."""
    if forward_ad_active():
        return False
    for t in tensors:  # a loop, not all(...): this runs on every layer call  # noqa: SIM110
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or _wrapped(t)):
            return False
    return True


def fused_eager_ok(*tensors: torch.Tensor | None) -> bool:
    """The fused eager path may run: nothing records the call, and every tensor given is a plain (not fake, not
    meta, not wrapped) float32 CPU tensor. ``None`` counts as fine."""
    return not recording() and plain_f32(*tensors)


def eager_f32(*tensors: torch.Tensor | None) -> bool:
    """:func:`fused_eager_ok` and no ``torch.func`` transform active, in one test: the fused eager path runs, and the
    caller need not ask :func:`under_func_transform`."""
    if _interpreters() is not None or torch.compiler.is_compiling() or jit_tracing():
        return False
    return plain_f32(*tensors)


_AUTOCAST_DEVICES = frozenset({"cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "ipu"})


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, or None when autocast is off there (or the device type has
    no autocast, such as meta)."""
    if device_type not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def recompute_vjp(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor | None],
    needs: Sequence[bool],
    grads: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor | None, ...]:
    """The vector-Jacobian product of ``fn`` at ``inputs`` with cotangents ``grads``, as a differentiable graph.

    A custom backward calls this when it is asked to build a graph (``torch.is_grad_enabled()`` inside
    ``backward``, i.e. ``create_graph=True``): ``fn`` must be the operation's formula in plain torch operations, so
    the result is differentiable to every order in the inputs and in ``grads`` (the saved inputs carry their
    history in this mode). ``needs[i]`` False or a None input gives None; a None cotangent counts as zero.
    """
    with torch.enable_grad():
        outs = fn(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        want = [i for i, (t, n) in enumerate(zip(inputs, needs, strict=True))
                if n and t is not None and t.requires_grad]
        result: list[torch.Tensor | None] = [None] * len(inputs)
        if not pairs or not want:
            for i in want:
                t = inputs[i]
                assert t is not None
                result[i] = torch.zeros_like(t)
            return tuple(result)
        wrt = [t for i, t in enumerate(inputs) if i in want and t is not None]
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], create_graph=True,
                                  allow_unused=True)
    for i, g in zip(want, got, strict=True):
        t = inputs[i]
        assert t is not None
        result[i] = torch.zeros_like(t) if g is None else g
    return tuple(result)


__all__ = ["autocast_dtype", "eager_f32", "forward_ad_active", "fused_eager_ok", "is_wrapped", "jit_tracing",
           "onnx_exporting", "plain_f32", "recompute_vjp", "recording", "under_func_transform", "unwrap_constant"]
