"""Hypothesis profiles shared by the pytest suite and ``rln-verify``.

dev       quick local runs (25 examples)
ci        extends Hypothesis' built-in ``ci`` profile (no database), 60 examples, not derandomized: each CI run
          takes its seed from the commit (``make test`` passes ``--hypothesis-seed``), so every commit explores new
          cases and a failure replays with one command
thorough  10x the examples of ``ci``
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 60
PROFILES: tuple[str, ...] = ("dev", "ci", "thorough")


def register_profiles() -> None:
    """Register ``dev``, ``ci`` and ``thorough`` (idempotent)."""
    try:
        builtin_ci = settings.get_profile("ci")
    except Exception:  # older Hypothesis has no built-in ci profile
        builtin_ci = settings(derandomize=True, database=None)
    # deadline=None: the first example pays torch's kernel warm-up, so per-example time is not
    # meaningful. too_slow is suppressed for the same reason (50-digit mpmath references are slow).
    settings.register_profile("ci", parent=builtin_ci, max_examples=CI_EXAMPLES, deadline=None, derandomize=False,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=10 * CI_EXAMPLES)


def profile_settings(name: str, seed: int | None = None) -> settings:
    """The settings of a registered profile; a seed makes the run reproducible (derandomized)."""
    register_profiles()
    base = settings.get_profile(name)
    if seed is None:
        return base
    return settings(base, database=None, derandomize=False)


def run_settings(name: str, seed: int | None = None) -> tuple[settings, int | None]:
    """The settings of a ``rln-verify`` run and its seed.

    Without a seed, a profile that is not derandomized gets a fresh one, returned so that the report can
    print it and the run can be repeated. The health checks on large inputs are off: an audited layer's
    input is as large as the user's ``--shape`` makes it.
    """
    base = profile_settings(name, seed)
    if seed is None and not base.derandomize:
        seed = random.SystemRandom().randrange(2**32)
        base = profile_settings(name, seed)
    cfg = settings(base, suppress_health_check=[*base.suppress_health_check, HealthCheck.large_base_example,
                                                HealthCheck.data_too_large])
    return cfg, seed


__all__ = ["CI_EXAMPLES", "PROFILES", "profile_settings", "register_profiles", "run_settings"]
