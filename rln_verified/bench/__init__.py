"""Benchmark support: the ratio gate over pytest-benchmark JSON, and exact saved-for-backward byte counts.

``python -m rln_verified.bench RUN.json`` is the gate; see ``benchmarks/README.md`` for the rules.
"""

from rln_verified.bench._gate import (
    GateError,
    Row,
    Thresholds,
    evaluate,
    format_table,
    load_run,
    load_thresholds,
    main,
)
from rln_verified.bench._memory import saved_bytes, saved_tensors

__all__ = [
    "GateError",
    "Row",
    "Thresholds",
    "evaluate",
    "format_table",
    "load_run",
    "load_thresholds",
    "main",
    "saved_bytes",
    "saved_tensors",
]
