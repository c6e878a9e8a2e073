"""Exact count of the bytes autograd keeps for backward.

``saved_bytes(fn, *inputs)`` runs ``fn(*inputs)`` once with grad enabled under
``torch.autograd.graph.saved_tensors_hooks`` and sums the sizes of the distinct storages that the graph
saved. Storages are deduplicated, so a tensor saved twice, or two views of one buffer, count once. The
input counts when the graph saves it (it usually does): that is the convention of the performance targets,
"bytes saved for backward, the input included". Parameters saved by an op (``weight``, ``bias``) count too.

The count does not depend on timing or on the allocator, so a gate can hold it to a tight threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    st = t.untyped_storage()
    return (str(t.device), st.data_ptr(), st.nbytes())


def saved_tensors(fn: Callable[..., Any], *inputs: Any) -> list[torch.Tensor]:
    """The distinct tensors (one per storage) that ``fn(*inputs)`` saves for backward, in save order."""
    kept: list[torch.Tensor] = []
    seen: set[tuple[str, int, int]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Holding a reference keeps every storage alive until the count is done, so the allocator cannot
        # hand a freed address to a later saved tensor and make two storages look like one.
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            kept.append(t)
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn(*inputs)
    del out
    return kept


def saved_bytes(fn: Callable[..., Any], *inputs: Any) -> int:
    """Bytes of the distinct storages saved for backward by ``fn(*inputs)``.

    Each storage counts once with its full size (a saved view keeps its whole buffer alive).

    Example::

        >>> ln = torch.nn.LayerNorm(8)
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> saved_bytes(ln, x) > x.numel() * 4
        True
    """
    return sum(t.untyped_storage().nbytes() for t in saved_tensors(fn, *inputs))
