"""The C kernels: each source beside its Python binding, and the machinery that builds them.

- ``rnorm.c`` / :mod:`.rnorm`: the fused float32 R-LayerNorm forward and backward (N11), also as torch operators;
- ``gauss.c`` / :mod:`.gauss`: the fused float32 ReLU moments, KL and clamped exp (RELU-6, KL-3, EXP-1), likewise;
- :mod:`.toolchain`: compiling, caching and loading a source (:class:`~.toolchain.Kernel`) and the environment
  switches.

:func:`available` and :func:`reason` answer for every kernel at once; each binding module has its own
``available()``/``reason()``/``disabled()`` for its kernel.
"""

from __future__ import annotations

from rln_verified._native import gauss, rnorm
from rln_verified._native.toolchain import Kernel, NativeBuildError

KERNELS: dict[str, Kernel] = {"rnorm.c": rnorm.KERNEL, "gauss.c": gauss.KERNEL}


def available() -> bool:
    """True when every C kernel is built, loaded and not switched off."""
    return all(k.available() for k in KERNELS.values())


def reason() -> str:
    """One line per kernel: its source and why it is or is not in use (``rnorm.c: built``)."""
    return "\n".join(f"{name}: {k.reason()}" for name, k in KERNELS.items())


__all__ = ["KERNELS", "Kernel", "NativeBuildError", "available", "gauss", "reason", "rnorm"]
