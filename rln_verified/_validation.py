"""Argument checks shared by the kernels and layers. None of them reads tensor data (no host sync)."""

from __future__ import annotations

import torch

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_float_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise ``TypeError`` naming what arrived."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a floating-point torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float64, float32, float16 or bfloat16), got {x.dtype}"
        )
    return x


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float16 and bfloat16 are computed in float32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def check_same_dtype(*pairs: tuple[str, torch.Tensor]) -> torch.dtype:
    """All tensors must share one floating dtype; return it, or raise ``TypeError`` listing them."""
    dtypes = {t.dtype for _, t in pairs}
    if len(dtypes) != 1:
        got = ", ".join(f"{n}={t.dtype}" for n, t in pairs)
        raise TypeError(f"expected tensors of one floating dtype, got {got}")
    return pairs[0][1].dtype
