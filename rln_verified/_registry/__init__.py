"""Per-topic claim lists. Each topic module defines ``CLAIMS: tuple[Claim, ...]``."""

from __future__ import annotations

import importlib
from types import ModuleType

from rln_verified._registry._types import Claim

TOPICS: tuple[str, ...] = ("special", "gaussian", "norm", "bayesian_linear")


def import_topics(package: str) -> dict[str, ModuleType]:
    """``package.<topic>`` for each topic that exists there (a missing topic module is skipped; an import error
    inside one propagates)."""
    found: dict[str, ModuleType] = {}
    for topic in TOPICS:
        name = f"{package}.{topic}"
        try:
            found[topic] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def load_all() -> tuple[Claim, ...]:
    out: list[Claim] = []
    for topic, module in import_topics("rln_verified._registry").items():
        claims: tuple[Claim, ...] = module.CLAIMS
        for c in claims:
            if c.topic != topic:
                raise RuntimeError(f"claim {c.id} lives in topic module {topic!r} but says topic={c.topic!r}")
        out.extend(claims)
    return tuple(out)


__all__ = ["TOPICS", "Claim", "import_topics", "load_all"]
