"""Checks: the executable half of a claim.

A :class:`Check` pairs a theorem ID with a Hypothesis strategy of *cases* (plain Python data, so a
counterexample prints as a ready-to-paste ``@example``) and a ``run`` function that evaluates the
claim on one case, on one device and dtype, and returns its *margin*: the observed quantity divided
by what the theorem allows. The claim holds on that case when ``margin <= 1``; ``target()`` drives
Hypothesis towards large margins. The pytest suite and ``rln-verify`` both call :func:`run_check`,
so there is one copy of every check.
"""

from __future__ import annotations

import contextvars
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from hypothesis import HealthCheck, example, given, seed, settings, target
from hypothesis import strategies as st
from hypothesis.errors import Found

CaseStrategy = Callable[[torch.dtype], st.SearchStrategy[Any]]
CaseRunner = Callable[[Any, torch.device, torch.dtype], float]
CaseExamples = Callable[[torch.dtype], Sequence[Any]]
#: (device, dtype, exhaustive) -> (margin, where, what was swept): a deterministic sweep run once per check.
CaseSweep = Callable[[torch.device, torch.dtype, bool], tuple[float, Any, str]]

ALL_DTYPES: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
"""Every float dtype the layers accept, for a claim stated in all of them."""
DEFAULT_DTYPES: tuple[torch.dtype, ...] = (torch.float64, torch.float32)
"""The dtypes a check covers unless it names others (``Check.dtypes``)."""


class NotApplicable(Exception):
    """Raised by a check when its claim does not apply to the subject; the message says why."""


def _no_examples(dtype: torch.dtype) -> Sequence[Any]:
    return ()


@dataclass(frozen=True)
class Check:
    """One executable check of one claim on one subject.

    Attributes:
        claim: theorem ID in ``proofs/`` (``"PSI-3"``).
        subject: what is checked (``"psi"``, ``"BayesianRLayerNorm2d"``).
        strategy: dtype -> Hypothesis strategy of cases (plain Python data).
        run: (case, device, dtype) -> margin. ``margin <= 1`` means the claim holds on this case.
            Return ``math.inf`` (or raise ``AssertionError``) for a qualitative violation.
        metric: how to read the margin in a report, e.g. ``"rel err / 1e-13"``, ``"|grad| / K bound"``.
        dtypes: dtypes the claim is stated for.
        examples: dtype -> pinned known-bad cases, always run first.
        calls_kernel: False for a reference self-check (the claim is checked in mpmath alone and no kernel is
            called, e.g. PSI-1's series remainder); a report labels such a row as a self-check, never as a
            kernel that holds in a dtype.
        sweep: an optional deterministic sweep run once before the search (EXP-1's enumeration of float32
            values), told whether the run is exhaustive (the ``thorough`` profile); it returns its worst margin,
            where that was, and a description of what it covered (recorded in ``CheckResult.extra["sweep"]``).
    """

    claim: str
    subject: str
    strategy: CaseStrategy
    run: CaseRunner
    metric: str
    dtypes: tuple[torch.dtype, ...] = DEFAULT_DTYPES
    examples: CaseExamples = _no_examples
    calls_kernel: bool = True
    sweep: CaseSweep | None = None

    @property
    def key(self) -> str:
        return f"{self.claim}/{self.subject}"


class Status(enum.Enum):
    """The outcome of one check on one device and dtype; the value is the report's word for it."""

    HOLDS = "holds"
    #: passed, and the check calls no kernel (:attr:`Check.calls_kernel` is False)
    SELF_CHECK = "holds (reference self-check)"
    #: the claim does not apply here (:class:`NotApplicable`); never counted as holding
    SKIPPED = "skipped"
    VIOLATED = "VIOLATED"
    #: the search itself failed (not a case of the claim), e.g. a Hypothesis health check
    ERROR = "ERROR"


@dataclass
class CheckResult:
    """What one run of a check on one device and dtype found: the worst margin, and a counterexample if any."""

    check: Check
    device: str
    dtype: torch.dtype
    examples_tried: int = 0
    worst_margin: float = 0.0
    worst_case: Any = None
    counterexample: Any = None
    #: what the checked code raised on the counterexample, or why the search failed
    error: str | None = None
    #: set when the claim does not apply here (the check raised :class:`NotApplicable`)
    skip_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """The outcome: skipped if a skip reason is set; else a counterexample or a margin above 1 (or NaN) is a
        violation; else ERROR if the search failed; else HOLDS (SELF_CHECK for a check that calls no kernel)."""
        if self.skip_reason is not None:
            return Status.SKIPPED
        if self.counterexample is not None or not self.worst_margin <= 1.0:
            return Status.VIOLATED
        if self.error is not None:
            return Status.ERROR
        return Status.HOLDS if self.check.calls_kernel else Status.SELF_CHECK

    @property
    def passed(self) -> bool:
        """True when the claim held: ``Status.HOLDS`` or ``Status.SELF_CHECK`` (never when skipped)."""
        return self.status in (Status.HOLDS, Status.SELF_CHECK)

    def example_decorator(self) -> str:
        """The counterexample as a ready-to-paste ``@example``."""
        return f"@example({self.counterexample!r})"


_REGISTRY: dict[str, Check] = {}

#: The result that :func:`run_check` is filling, for :func:`record_part`.
_CURRENT: contextvars.ContextVar[CheckResult | None] = contextvars.ContextVar("rln_verified_check", default=None)


def record_part(name: str, margin: float) -> None:
    """Fold the margin of one part of a check (N4's ``"y"`` and ``"u"``) into the running result's
    ``extra["parts"]``, the worst over its cases (NaN is a violation, as in every margin). Outside
    :func:`run_check` it does nothing."""
    from rln_verified.verify._margins import fold

    result = _CURRENT.get()
    if result is not None:
        parts: dict[str, float] = result.extra.setdefault("parts", {})
        parts[name] = fold(parts.get(name, 0.0), margin)


def register(*checks: Check) -> None:
    """Add checks to the registry; ``RuntimeError`` if a key (``claim/subject``) is already registered."""
    for c in checks:
        if c.key in _REGISTRY:
            raise RuntimeError(f"check {c.key} is registered twice")
        _REGISTRY[c.key] = c


def registered_checks() -> tuple[Check, ...]:
    """Every registered check, the built-in ones included (they are imported on first use)."""
    _load_builtin_checks()
    return tuple(_REGISTRY.values())


def get_check(key: str) -> Check:
    """The check registered as ``key`` (``"CLAIM/subject"``); ``KeyError`` naming the known keys if none."""
    _load_builtin_checks()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown check {key!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def checks_for(claim: str) -> tuple[Check, ...]:
    """The checks of one claim (theorem ID, e.g. ``"N3"``), one per subject; empty if it has none."""
    _load_builtin_checks()
    return tuple(c for c in _REGISTRY.values() if c.claim == claim)


_LOADED = False


def _load_builtin_checks() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from rln_verified._registry import import_topics

    import_topics("rln_verified.verify")  # each topic module registers its checks on import


def run_check(
    check: Check,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    settings_: settings | None = None,
    raise_on_failure: bool = False,
    seed_: int | None = None,
    exhaustive: bool = False,
) -> CheckResult:
    """Search for a case with ``margin > 1``; return the worst margin seen and any counterexample.

    With ``raise_on_failure`` (the pytest path) Hypothesis' own failure, shrunk and with its
    ``Falsifying example`` report, propagates. Otherwise the shrunk counterexample is returned, and
    anything the checked code raises is a finding on that case, not a crash. A check that raises
    :class:`NotApplicable` is reported as skipped, with its reason. ``seed_`` fixes the search's seed
    (for settings that are not derandomized). ``exhaustive`` is passed to the check's sweep, if it has one
    (the ``thorough`` profile sets it).
    """
    dev = torch.device(device)
    result = CheckResult(check=check, device=str(dev), dtype=dtype)
    token = _CURRENT.set(result)
    try:
        return _search(check, dev, dtype, result, settings_, raise_on_failure, seed_, exhaustive)
    finally:
        _CURRENT.reset(token)


def _search(check: Check, dev: torch.device, dtype: torch.dtype, result: CheckResult, settings_: settings | None,
            raise_on_failure: bool, seed_: int | None, exhaustive: bool) -> CheckResult:
    label = check.key

    def evaluate(case: Any) -> float:
        result.examples_tried += 1
        margin = float(check.run(case, dev, dtype))
        if math.isnan(margin):
            margin = math.inf
        if margin > result.worst_margin or result.worst_case is None:
            result.worst_margin = max(result.worst_margin, margin)
            result.worst_case = case
        return margin

    def fail_message(margin: float, case: Any) -> str:
        return f"{label} [{dev}, {dtype}]: margin {margin:.6g} > 1 ({check.metric}) at {case!r}"

    def body(case: Any) -> None:
        margin = evaluate(case)
        target(min(margin, 1e300), label=label)
        assert margin <= 1.0, fail_message(margin, case)

    strategy = check.strategy(dtype)
    examples = list(check.examples(dtype))
    if check.sweep is not None:
        try:
            sweep_margin, where, covered = check.sweep(dev, dtype, exhaustive)
        except NotApplicable as exc:
            if raise_on_failure:
                raise
            return _skipped(result, str(exc))
        sweep_margin = math.inf if math.isnan(sweep_margin) else float(sweep_margin)
        result.extra["sweep"] = covered
        result.examples_tried += 1
        result.worst_margin, result.worst_case = sweep_margin, where
        if sweep_margin > 1.0:
            if raise_on_failure:
                raise AssertionError(fail_message(sweep_margin, where) + f" (sweep: {covered})")
            result.counterexample = where
            return result
    if raise_on_failure:
        test: Callable[..., None] = given(strategy)(body)
        for ex in reversed(examples):
            test = example(ex)(test)
        if settings_ is not None:
            test = settings_(test)
        test()
        return result

    failing: list[Any] = []
    skipped: list[str] = []
    raised: list[str] = []

    def recording_body(case: Any) -> None:
        if skipped:
            return
        try:
            margin = evaluate(case)
        except NotApplicable as exc:
            skipped.append(str(exc))
            return
        except Exception as exc:  # the checked code raised: a finding on this case, of infinite margin
            failing.append(case)
            result.worst_margin, result.worst_case = math.inf, case
            raised.append(one_line(f"{type(exc).__name__}: {exc}"))
            raise AssertionError(raised[-1]) from exc
        target(min(margin, 1e300), label=label)
        if margin > 1.0:
            failing.append(case)
            raised.append("")
            raise AssertionError(fail_message(margin, case))

    # Applicability does not depend on the case: ask the first pinned example before searching.
    if examples:
        try:
            check.run(examples[0], dev, dtype)
        except NotApplicable as exc:
            return _skipped(result, str(exc))
        except Exception:
            pass  # a finding: the search below records it with the shrunk case
    rec: Callable[..., None] = given(strategy)(recording_body)
    for ex in reversed(examples):
        rec = example(ex)(rec)
    base = settings_ if settings_ is not None else settings()
    rec = settings(base, suppress_health_check=[*base.suppress_health_check, HealthCheck.too_slow])(rec)
    if seed_ is not None:
        rec = seed(seed_)(rec)
    try:
        rec()
    except Exception as exc:  # AssertionError, Found, a group of failing pinned examples, Flaky, ...
        if failing:
            # A search ends by replaying its shrunk case, so the last failure is the minimal one; when several
            # pinned examples fail, Hypothesis raises them together and the first is reported.
            i = 0 if isinstance(getattr(exc, "exceptions", None), tuple) else len(failing) - 1
            result.counterexample = failing[i]
            result.error = raised[i] or None
        elif isinstance(exc, AssertionError | Found):
            result.counterexample = result.worst_case
        else:
            result.error = one_line(f"{type(exc).__name__}: {exc}")
    if skipped:
        return _skipped(result, skipped[0])
    return result


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with "..." where longer."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _skipped(result: CheckResult, reason: str) -> CheckResult:
    result.examples_tried = 0
    result.worst_margin = 0.0
    result.worst_case = None
    result.counterexample = None
    result.error = None
    result.skip_reason = reason
    return result


def assert_check(claim: str, subject: str, device: str | torch.device, dtype: torch.dtype) -> CheckResult:
    """pytest entry point: run the registered check under the active Hypothesis profile."""
    check = get_check(f"{claim}/{subject}")
    if dtype not in check.dtypes:
        raise ValueError(f"{check.key} is not stated for {dtype}; it is stated for {check.dtypes}")
    exhaustive = settings.get_current_profile_name() == "thorough"
    return run_check(check, device, dtype, raise_on_failure=True, exhaustive=exhaustive)


# ---- helpers shared by check modules -------------------------------------------------------------


def finite_floats(dtype: torch.dtype, *, min_value: float | None = None, max_value: float | None = None,
                  allow_subnormal: bool = False) -> st.SearchStrategy[float]:
    """Finite Python floats representable in ``dtype`` (every order of magnitude)."""
    widths: dict[torch.dtype, Literal[16, 32, 64]] = {torch.float64: 64, torch.float32: 32, torch.float16: 16}
    width = widths.get(dtype)
    if width is not None:
        return st.floats(min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False,
                         width=width, allow_subnormal=allow_subnormal)
    # bfloat16: draw float32 and round to bfloat16 (exactly representable afterwards).
    fi = torch.finfo(torch.bfloat16)
    lo = -float(fi.max) if min_value is None else min_value
    hi = float(fi.max) if max_value is None else max_value
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False, width=32,
                     allow_subnormal=allow_subnormal).map(
        lambda v: float(torch.tensor(v, dtype=torch.float32).to(torch.bfloat16).float())
    ).filter(lambda v: lo <= v <= hi and math.isfinite(v))


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Positive floats spread evenly over the orders of magnitude of [lo, hi]."""
    a, b = math.log(lo), math.log(hi)
    return st.floats(min_value=a, max_value=b, allow_nan=False).map(math.exp).map(lambda v: min(max(v, lo), hi))


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps/2, the relative error of one correctly rounded operation."""
    return eps(dtype) / 2


def smallest_normal(dtype: torch.dtype) -> float:
    """The smallest positive normal number of ``dtype``."""
    return float(torch.finfo(dtype).tiny)


def round_to(v: float, dtype: torch.dtype) -> float:
    """``v`` rounded to ``dtype`` (nearest), as a Python float."""
    return float(torch.tensor(v, dtype=torch.float64).to(dtype).double())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for float16 and bfloat16, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: psi's relative error inside the norm (N4, N9) and Bayesian-linear (C1) bounds: PSI-3's derived bounds
#: (9.8e-15 in float64, 1.2e-6 in float32; ``verify.special.psi_tol``) rounded up, so every bound that adds it stays
#: an upper bound.
PSI_REL_ERR: dict[torch.dtype, float] = {torch.float64: 1e-13, torch.float32: 2e-6}


__all__ = [
    "ALL_DTYPES",
    "DEFAULT_DTYPES",
    "PSI_REL_ERR",
    "Check",
    "CheckResult",
    "NotApplicable",
    "Status",
    "assert_check",
    "checks_for",
    "compute_dtype",
    "eps",
    "finite_floats",
    "get_check",
    "log_uniform",
    "one_line",
    "record_part",
    "register",
    "registered_checks",
    "round_to",
    "run_check",
    "smallest_normal",
    "unit_roundoff",
]
