"""The record type of the claims registry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """One theorem of ``proofs/``.

    Attributes:
        id: stable theorem ID, e.g. ``"PSI-2"``. It names a heading in ``proofs/<topic>.md`` and the
            ``@pytest.mark.claim`` marker of every test that checks it.
        topic: the ``proofs/`` file (without ``.md``) that states and proves it.
        statement: a one-line statement, assumptions included.
        covers: qualified names of the public functions or classes it is about.
    """

    id: str
    topic: str
    statement: str
    covers: tuple[str, ...]
