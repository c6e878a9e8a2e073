"""NaN never passes a check: every registered check, fed a kernel that returns NaN, reports a violation.

The helper that folds margins (rln_verified/verify/_margins.py) is tested first: Python's ``max()`` drops a NaN that is
not its first argument, ``abs()`` hides a sign and every comparison with NaN is False, so a check that folds its margins
by hand can turn a NaN output into a pass. Then, for each registered check, the kernel it calls is replaced by one that
returns NaN (the same values times NaN, so gradients are NaN too), and the check must return a margin > 1 (NaN itself
is not accepted: the check must fold it to a violation) or raise AssertionError, on its first pinned case.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import mpmath
import pytest
import torch
from hypothesis import find

import rln_verified._bayesian_linear as bayes_mod
import rln_verified._native.rnorm as rnorm_mod
import rln_verified._norm_formula as norm_formula
import rln_verified.verify.gaussian as gaussian_checks
import rln_verified.verify.special as special_checks
from rln_verified import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified._bayesian_conv import BBBConv2d, CLTConv2d, LRConv2d
from rln_verified._bayesian_linear import BBBLinear, CLTLinear, CLTLinearDet, LRLinear
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified.verify._core import Check, NotApplicable, registered_checks
from rln_verified.verify._margins import fold, guarded, has_nan, ratio, rel_err

NAN = float("nan")


# ---- the helper --------------------------------------------------------------------------------------


def test_python_max_drops_nan_and_fold_does_not() -> None:
    # The defect the helper exists for, measured so the test is not vacuous.
    assert max(0.5, NAN) == 0.5 and math.isnan(max(NAN, 0.5))
    assert fold(0.5, NAN) == math.inf and fold(NAN, 0.5) == math.inf
    assert fold(torch.tensor([0.1, NAN, 0.2])) == math.inf
    assert fold([0.2, [0.7, 0.3]], torch.tensor([0.4])) == 0.7
    assert fold() == 0.0


def test_ratio_rel_err_guarded_and_has_nan() -> None:
    assert ratio(NAN, 1.0) == math.inf and ratio(1.0, NAN) == math.inf
    assert ratio(0.0, 0.0) == 0.0 and ratio(1e-300, 0.0) == math.inf and ratio(1.0, 4.0) == 0.25
    assert rel_err(NAN, 1.0) == math.inf and rel_err(1.0, mpmath.mpf("nan")) == math.inf
    assert rel_err(math.inf, mpmath.inf) == math.inf  # inf - inf is NaN: a violation, not a pass
    assert rel_err(0.0, 0.0) == 0.0 and rel_err(1e-300, 0.0) == math.inf
    assert guarded(0.1, torch.tensor([1.0, NAN])) == math.inf and guarded(0.1, [1.0, (2.0, 3.0)]) == 0.1
    assert has_nan(None, 1, "x", torch.tensor([1, 2])) is False
    assert has_nan(mpmath.mpf("nan")) and has_nan((1.0, [NAN]))


# ---- every check against a NaN kernel ----------------------------------------------------------------


def _times_nan(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out * NAN if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_times_nan(o) for o in out)
    return out


def _nan_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _times_nan(fn(*args, **kwargs))

    return wrapper


def _nan_stats(fn: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = dict(fn(*args, **kwargs))
        out["r"] = out["r"] * NAN
        return out

    return wrapper


def _poison_attr(mp: pytest.MonkeyPatch, owner: Any, name: str) -> None:
    mp.setattr(owner, name, _nan_function(getattr(owner, name)))


_NORM_CLASSES = {c.__name__: c for c in (RLayerNorm, BayesianRLayerNorm, RLayerNorm2d, BayesianRLayerNorm2d)}
_LINEAR_CLASSES = (BBBLinear, LRLinear, CLTLinear, CLTLinearDet, BBBConv2d, LRConv2d, CLTConv2d)


def _poison(mp: pytest.MonkeyPatch, check: Check) -> None:
    """Replace the kernel that ``check`` calls by one returning NaN (for a reference self-check: its reference)."""
    claim, subject = check.claim, check.subject
    if claim == "PSI-1":
        mp.setattr(special_checks, "psi_series_remainder", lambda t, j: (mpmath.mpf("nan"), mpmath.mpf(1)))
    elif claim == "RELU-1":
        mp.setattr(gaussian_checks, "relu_identity_discrepancy", lambda a, s: NAN)
    elif claim.startswith(("PSI-", "SP-")):
        _poison_attr(mp, special_checks, subject)
        if subject == "inv_softplus":  # the round trips call both
            _poison_attr(mp, special_checks, "softplus")
    elif claim == "EXP-1":  # the std's exp, through the layers (std() and var() both call _std_of)
        _poison_attr(mp, bayes_mod.BayesianLinear, "_std_of")
    elif claim.startswith(("GAUSS-", "RELU-", "CRELU-", "KL-")):
        _poison_attr(mp, gaussian_checks, subject)
    elif claim == "C1":
        _poison_attr(mp, bayes_mod, "kl_normal")
    elif claim.startswith("C"):
        for cls in (*_LINEAR_CLASSES, BayesianMLP):
            _poison_attr(mp, cls, "forward")
    elif check.key == "N11/rnorm psi and expm1":  # the kernel's lane functions, through their Python wrappers
        _poison_attr(mp, rnorm_mod, "vector_psi_expm1")
        _poison_attr(mp, rnorm_mod, "scalar_psi")
    elif claim == "N0":
        mp.setattr(norm_formula, "group_stats", _nan_stats(norm_formula.group_stats))
    elif claim.startswith("N"):
        _poison_attr(mp, _NORM_CLASSES[subject], "forward")
    else:
        raise AssertionError(f"no NaN poison for {check.key}: add one, so that every check is fed a NaN")


def _first_case(check: Check, dtype: torch.dtype) -> Any:
    examples = list(check.examples(dtype))
    return examples[0] if examples else find(check.strategy(dtype), lambda _: True)


_KEYS = sorted(c.key for c in registered_checks())


@pytest.mark.parametrize("key", _KEYS)
def test_every_check_reports_a_nan_kernel_as_a_violation(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check = next(c for c in registered_checks() if c.key == key)
    dtype = torch.float64 if torch.float64 in check.dtypes else check.dtypes[0]
    case = _first_case(check, dtype)
    # The unpoisoned check passes on this case, so the violation below is the NaN's doing.
    try:
        assert check.run(case, torch.device("cpu"), dtype) <= 1.0
    except NotApplicable as exc:  # the fused kernels' checks (N11, RELU-6, EXP-1) where the kernel is off
        pytest.skip(f"{key} does not apply here: {exc}")
    with monkeypatch.context() as mp:
        _poison(mp, check)
        try:
            margin = check.run(case, torch.device("cpu"), dtype)
        except AssertionError:
            return  # a qualitative violation, raised
    assert margin > 1.0, f"{key}: a NaN kernel gave margin {margin!r} on {case!r}"


@pytest.mark.parametrize(("claim", "subject", "ref_name"),
                         [("PSI-3", "psi", "psi_ref"), ("SP-1", "softplus", "softplus_ref"),
                          ("RELU-4", "relu_moments", "relu_moments_ref"), ("KL-1", "kl_normal", "kl_ref"),
                          ("RELU-5", "relu_moments", "relu_grads_ref")])
def test_a_nan_reference_is_a_violation(claim: str, subject: str, ref_name: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    check = next(c for c in registered_checks() if c.key == f"{claim}/{subject}")
    module = special_checks if claim.startswith(("PSI", "SP")) else gaussian_checks
    real = getattr(module, ref_name)

    def nan_ref(*args: Any) -> Any:
        out = real(*args)
        return tuple(mpmath.mpf("nan") for _ in out) if isinstance(out, tuple) else mpmath.mpf("nan")

    monkeypatch.setattr(module, ref_name, nan_ref)
    case = _first_case(check, torch.float64)
    assert check.run(case, torch.device("cpu"), torch.float64) > 1.0


def test_n9_catches_a_nan_leaking_from_the_poisoned_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """N9's own NaN: a layer whose every output depends on sample 0 passes NaN from it to the others."""
    check = next(c for c in registered_checks() if c.key == "N9/RLayerNorm")
    case = _first_case(check, torch.float64)
    real = RLayerNorm.forward

    def leaky(self: RLayerNorm, x: torch.Tensor) -> torch.Tensor:
        return real(self, x) + 0.0 * x[0].sum()

    monkeypatch.setattr(RLayerNorm, "forward", leaky)
    assert check.run(case, torch.device("cpu"), torch.float64) > 1.0
