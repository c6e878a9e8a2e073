"""The Triton kernels of the R-LayerNorm operators (rln_verified/_native/rnorm_triton.py) under Triton's interpreter.

Not collected by the main run: ``tests/test_triton.py`` runs this file in one subprocess with ``TRITON_INTERPRET=1``
(Triton decides at import whether its kernels are compiled or interpreted), so the kernels run on CPU tensors. The
bound is N11's, through the same harness as the C kernel (``test_native._margins``): the Triton kernels keep every sum
and per-group scalar in float64 and round once to float32, which is all N11's proof uses (proofs/norm.md).
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, target
from test_native import _margins, _pin, cases

from rln_verified._native import rnorm, rnorm_triton
from rln_verified._native.rnorm import PlaneConfig

if os.environ.get("TRITON_INTERPRET") != "1" or not rnorm_triton.available():
    pytest.skip("run by tests/test_triton.py with TRITON_INTERPRET=1 and triton installed", allow_module_level=True)


def _config(shape: tuple[int, ...], two_d: bool, w: torch.Tensor | None, bayes: bool, alpha: float) -> PlaneConfig:
    p, l_ = (shape[-2], shape[-1]) if two_d else (math.prod(shape[1:-1]), shape[-1])
    mode = 0 if w is None else (1 if two_d else 2)
    return PlaneConfig(None, 1.0, 1e-5, alpha, bayes, two_d, mode, p, l_)


def _run_triton(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, lam: torch.Tensor, alpha: float,
                bayes: bool, two_d: bool, gy: torch.Tensor, gu: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The test_native runner's outputs, from the operators' CUDA kernels (here: the interpreted Triton kernels)."""
    cfg = _config(tuple(x.shape), two_d, w, bayes, alpha)
    assert rnorm_triton.usable(x, two_d, cfg.p, cfg.l)
    wf = w.reshape(-1) if (w is not None and not two_d) else w
    bf = b.reshape(-1) if (b is not None and not two_d) else b
    y, u, stats = rnorm.cuda_forward(x, wf, bf, lam, *cfg)
    assert bool((stats[:, 1] != 0).all()), "the Triton forward saves 1/sigma per group (the plain branch saves zeros)"
    gx, g_w, g_b, g_l = rnorm.cuda_backward(x, wf, lam, stats, gy, gu.reshape(-1) if bayes else None, *cfg,
                                            w is not None, b is not None)
    ushape = (*x.shape[:2], 1, 1) if two_d else (x.shape[0],) + (1,) * (x.dim() - 1)
    zero = torch.zeros(())
    return (y, (u if bayes else torch.zeros_like(u)).reshape(ushape), gx,
            g_w.reshape(w.shape) if w is not None else zero, g_b.reshape(b.shape) if b is not None else zero, g_l)


@pytest.mark.claim("N11")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example(_pin(True, (2, 3, 4, 5), [1.0]))  # constant groups
@example(_pin(True, (2, 2, 4, 4), [1.0, -1.0]))  # alternating signs
@example(_pin(True, (1, 2, 5, 5), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0]))  # spikes
@example(_pin(True, (1, 2, 3, 4), [1.0, -1.0, 0.5, 0.25], scale=3e38 / 1.0))  # float32 max
@example(_pin(True, (1, 2, 2, 3), [1.0, -0.5, 0.25], scale=2.0**-140))  # subnormals
@example(_pin(False, (2, 3, 6), [0.5, -0.5, 0.0], offset=1e6))  # huge offset
@example(_pin(False, (2, 1, 2), [1.0, 2.0]))  # the smallest window
@example(_pin(False, (3, 2, 7), [1.0, -1.0, 2.0], bayes=False, affine="none"))
@example(_pin(True, (1, 1, 5, 17), [0.0, 4.0] + [0.0] * 14 + [2.0, -1.0]))  # spikes on the end columns
@example(_pin(True, (1, 2, 3, 3), [2.0, -1.0, 0.0], alpha=3.0, lam=1.0))  # the n = 3 reuse weights, 5/3 inside
def test_triton_kernels_match_float64_formula(case: dict[str, Any]) -> None:
    margin = _margins(case, _run_triton)
    target(margin, label="N11 error / bound (Triton)")
    assert margin <= 1.0, margin


def test_triton_branch_is_taken_and_large_planes_take_the_formula() -> None:
    """The CUDA kernels take the Triton branch wherever ``usable`` says so (real per-group stats), and the plain
    formula above MAX_M (zero stats); both give the float64 formula's values to N11's float32 rounding."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 0, 4, 4)
    assert rnorm_triton.usable(x, True, 4, 4)
    y, _, stats = rnorm.cuda_forward(x, None, None, lam, *cfg)
    assert bool((stats[:, 1] > 0).all())
    big = torch.randn(1, rnorm_triton.MAX_M + 2)
    cfg_big = PlaneConfig(None, 1.0, 1e-5, 1.0, True, False, 0, 1, rnorm_triton.MAX_M + 2)
    assert not rnorm_triton.usable(big, False, 1, rnorm_triton.MAX_M + 2)
    y_big, _, stats_big = rnorm.cuda_forward(big, None, None, lam, *cfg_big)
    assert bool((stats_big == 0).all())
    for inp, out, c in ((x, y, cfg), (big, y_big, cfg_big)):
        ref, _ = rnorm.plain(inp.double(), None, None, lam.double(), c)
        assert float((out.double() - ref).abs().max()) <= 2.0**-23 * float(ref.abs().max()) + 1e-30


@pytest.mark.claim("N9")
def test_nan_and_inf_stay_in_their_group() -> None:
    x = torch.randn(3, 2, 4, 4)
    x[1, 0, 2, 2] = math.nan
    x[2, 1, 0, 0] = math.inf
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 0, 4, 4)
    y, u, stats = rnorm.cuda_forward(x, None, None, lam, *cfg)
    bad = torch.zeros(3, 2, dtype=torch.bool)
    bad[1, 0] = bad[2, 1] = True
    assert bool(torch.isfinite(y[~bad]).all()) and bool(torch.isfinite(u.reshape(3, 2)[~bad]).all())
    assert not bool(torch.isfinite(y[bad]).any())
    gy = torch.randn_like(x)
    gx, _, _, _ = rnorm.cuda_backward(x, None, lam, stats, gy, torch.ones(6), *cfg, False, False)
    assert bool(torch.isfinite(gx[~bad]).all())


def test_the_checks_before_the_kernel() -> None:
    """Wrong dtypes, sizes and devices are refused before a Triton pointer is formed, as before a C one."""
    x = torch.randn(2, 3, 4, 4)
    lam = torch.tensor(0.5)
    cfg = PlaneConfig(None, 1.0, 1e-5, 1.0, True, True, 1, 4, 4)
    with pytest.raises(TypeError, match=r"must be torch\.float32"):
        rnorm.cuda_forward(x.double(), torch.ones(3), None, lam, *cfg)
    with pytest.raises(ValueError, match="weight has 2 elements, expected 3"):
        rnorm.cuda_forward(x, torch.ones(2), None, lam, *cfg)
    with pytest.raises(ValueError, match="bias must have 3 elements"):
        rnorm.cuda_forward(x, torch.ones(3), torch.ones(2), lam, *cfg)
    with pytest.raises(ValueError, match="lambda must have 1 elements"):
        rnorm.cuda_forward(x, torch.ones(3), None, torch.ones(2), *cfg)
