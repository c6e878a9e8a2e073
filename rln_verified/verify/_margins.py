"""Folding margins so that NaN can never pass.

A margin is an observed quantity divided by what a theorem allows; the claim holds on a case when the margin is
``<= 1``. Python's ``max()`` drops a NaN that is not its first argument, ``abs()`` hides a sign, and every comparison
with NaN is False, so a check that folds its margins by hand can turn a NaN output into a pass. Every check folds
through these helpers instead: a NaN anywhere in a margin, a computed value or a reference makes the margin ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import mpmath
import torch

Value = Any  # float, int, mpmath.mpf, torch.Tensor, or a (nested) sequence of these; None is ignored


def _items(values: Iterable[Value]) -> Iterable[Value]:
    for v in values:
        if isinstance(v, list | tuple):
            yield from _items(v)
        else:
            yield v


def has_nan(*values: Value) -> bool:
    """True when any value (a number, an mpmath number, a tensor, or a sequence of them) is or holds a NaN."""
    for v in _items(values):
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if (v.is_floating_point() or v.is_complex()) and bool(torch.isnan(v.detach()).any()):
                return True
        elif isinstance(v, mpmath.mpf):
            if mpmath.isnan(v):
                return True
        elif isinstance(v, float) and math.isnan(v):
            return True
    return False


def _as_float(m: Value) -> float:
    if isinstance(m, torch.Tensor):
        if m.numel() == 0:
            return 0.0
        return float(m.detach().double().max())
    return float(m)


def fold(*margins: Value) -> float:
    """The worst of the margins (numbers or tensors of them); ``inf`` if any of them is NaN. No margins: 0."""
    if has_nan(*margins):
        return math.inf
    worst = 0.0
    for m in _items(margins):
        if m is None:
            continue
        v = _as_float(m)
        if math.isnan(v):  # a reduction produced NaN (e.g. inf - inf inside a tensor margin)
            return math.inf
        worst = v if v > worst else worst
    return worst


def guarded(margin: Value, *values: Value) -> float:
    """``margin`` folded, or ``inf`` when any of ``values`` (the check's inputs, outputs, references) holds a NaN."""
    return math.inf if has_nan(*values) else fold(margin)


def ratio(err: Value, allowed: Value) -> float:
    """``err / allowed`` as a margin: ``inf`` if either is NaN; with ``allowed == 0`` only ``err == 0`` passes."""
    if has_nan(err, allowed):
        return math.inf
    e, a = float(err), float(allowed)
    if a <= 0:
        return 0.0 if e == 0 else math.inf
    return fold(e / a)


def rel_err(got: Value, ref: Value) -> float:
    """``|got - ref| / |ref|``, computed in mpmath; ``inf`` if either is NaN, and 0 is exact only against 0."""
    if has_nan(got, ref):
        return math.inf
    r = mpmath.mpf(ref)
    g = mpmath.mpf(float(got)) if isinstance(got, torch.Tensor) else mpmath.mpf(got)
    if r == 0:
        return 0.0 if g == 0 else math.inf
    out = float(abs((g - r) / r))
    return math.inf if math.isnan(out) else out  # inf against inf


__all__ = ["fold", "guarded", "has_nan", "ratio", "rel_err"]
