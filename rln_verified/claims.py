"""The registry of stability claims.

Every theorem in ``proofs/`` has one entry here (ID, statement, the functions it covers). The
traceability test checks that the registry, the ``proofs/`` headings and the tests' ``claim`` markers
agree, so a later tool can list and run the claims by ID.
"""

from __future__ import annotations

import re

from rln_verified._registry import Claim, load_all

#: Shape of a theorem ID: letters, an optional hyphen, digits (``PSI-2``, ``N3``, ``C1``).
CLAIM_ID = re.compile(r"^[A-Z][A-Z]*-?[0-9]+$")

CLAIMS: tuple[Claim, ...] = load_all()


def _index() -> dict[str, Claim]:
    out: dict[str, Claim] = {}
    for c in CLAIMS:
        if not CLAIM_ID.match(c.id):
            raise RuntimeError(f"claim ID {c.id!r} does not match {CLAIM_ID.pattern}")
        if c.id in out:
            raise RuntimeError(f"claim ID {c.id!r} is registered twice")
        out[c.id] = c
    return out


_BY_ID = _index()


def get_claim(claim_id: str) -> Claim:
    """Return the claim with this ID; raise ``KeyError`` naming the known IDs otherwise."""
    try:
        return _BY_ID[claim_id]
    except KeyError:
        raise KeyError(f"unknown claim {claim_id!r}; known: {', '.join(sorted(_BY_ID))}") from None


def claim_ids() -> tuple[str, ...]:
    return tuple(c.id for c in CLAIMS)


__all__ = ["CLAIMS", "CLAIM_ID", "Claim", "claim_ids", "get_claim"]
