"""The stability suite: executable checks of the claims in ``proofs/``.

Requires the ``verify`` extra (Hypothesis and mpmath).
"""

from rln_verified.verify._core import (
    ALL_DTYPES,
    DEFAULT_DTYPES,
    Check,
    CheckResult,
    NotApplicable,
    Status,
    assert_check,
    checks_for,
    get_check,
    register,
    registered_checks,
    run_check,
)

__all__ = [
    "ALL_DTYPES",
    "DEFAULT_DTYPES",
    "Check",
    "CheckResult",
    "NotApplicable",
    "Status",
    "assert_check",
    "checks_for",
    "get_check",
    "register",
    "registered_checks",
    "run_check",
]
