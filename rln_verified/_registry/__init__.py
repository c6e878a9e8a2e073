"""Per-topic claim lists. Each topic module defines ``CLAIMS: tuple[Claim, ...]``."""

from __future__ import annotations

import importlib

from rln_verified._registry._types import Claim

TOPICS: tuple[str, ...] = ("special", "gaussian", "norm", "bayesian_linear")


def load_all() -> tuple[Claim, ...]:
    out: list[Claim] = []
    for topic in TOPICS:
        try:
            module = importlib.import_module(f"rln_verified._registry.{topic}")
        except ModuleNotFoundError as exc:
            if exc.name == f"rln_verified._registry.{topic}":
                continue
            raise
        claims: tuple[Claim, ...] = module.CLAIMS
        for c in claims:
            if c.topic != topic:
                raise RuntimeError(f"claim {c.id} lives in topic module {topic!r} but says topic={c.topic!r}")
        out.extend(claims)
    return tuple(out)


__all__ = ["TOPICS", "Claim", "load_all"]
