"""The transform matrix (docs/transforms.md): every public layer and functional form under every PyTorch transform.

Each cell either matches an independent reference (float64 eager, autograd on it, or finite differences) within the
tolerance written next to the comparison in ``tests/_transform_cells.py``, or raises an error that says what is
unsupported and what to do instead. The refusals are the explicit table ``REFUSED`` below: a cell listed there must
raise with that message fragment, and a cell not listed must be right, so no cell can move from right to refused (or
back) without this file changing. Nothing may be silently wrong.

- Subjects, shapes, noise and tolerances: ``tests/_transform_cases.py``.
- Autocast cells run in a forked child (``tests/_transform_isolate.py``): a crash fails that cell only.
- DDP and FSDP2 run in one two-process launch for all subjects (``tests/transform_workers/dist_matrix.py``); its
  results are read by the cells here.
- Each cell's outcome (right / refused / failed) is appended to ``$RLN_TRANSFORMS_RESULTS`` (default
  ``build/transforms/``, one file per pytest process); ``python docs/gen_transforms.py`` makes ``docs/transforms.md``.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _transform_cases import SUBJECTS
from _transform_cells import CELLS, COLUMNS, ISOLATED, describe, not_applicable
from _transform_isolate import CellCrashed, run_cell, run_isolated

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("RLN_TRANSFORMS_RESULTS", ROOT / "build" / "transforms"))
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")

# The tracer's warnings about Python-level shape checks are expected; whether the trace generalizes is what the
# jit cells check, on a second input. Exporting to ONNX in training mode is intended (the sampling layers sample).
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode")]

#: (subject, column) -> a fragment of the error message the cell must raise. Every other cell must be right.
#: ONNX: ONNX has no erfcx, and the exp(y^2) erfc(y) an exporter puts in its place overflows in the Gaussian tails
#: these kernels are accurate in (an earlier tree exported normal_logcdf and onnxruntime returned -inf at x = -5.6,
#: where the value is -18.4), so everything built on the Gaussian tail refuses to export.
#: Per-sample gradients of LR (linear and conv): it draws one noise row per sample, and under vmap a stored
#: (manual_reset) noise of the batch's shape cannot be matched to the samples.
_ONNX_TAIL = "ONNX export is not supported: ONNX has no erfcx"
_LR_PER_SAMPLE = "under a torch.func transform (vmap over samples: per-sample gradients)"
REFUSED: dict[tuple[str, str], str] = {
    **{(s, "onnx"): _ONNX_TAIL for s in (
        "CLTLinear", "CLTLinearDet", "BayesianMLP[clt]", "CLTLinear[64x96]", "CLTLinearDet[64x96]",
        "BayesianMLP[clt][64x96]", "F.normal_cdf", "F.normal_logcdf", "F.relu_moments", "F.neg_relu_moments",
        "F.crelu_moments", "CLTConv2d", "CLTConv2d[var_h]")},
    **{(s, "per_sample_grad"): _LR_PER_SAMPLE for s in (
        "LRLinear", "BayesianMLP[lr]", "LRLinear[64x96]", "BayesianMLP[lr][64x96]", "LRConv2d")},
}


def _record(subject: str, column: str, outcome: str, detail: str, seconds: float) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run": RUN_ID, "subject": subject, "column": column, "outcome": outcome, "detail": detail,
                       "seconds": round(seconds, 3)})
    with open(RESULTS_DIR / f"{RUN_ID}-{WORKER}.jsonl", "a") as fh:
        fh.write(line + "\n")


def _dist_results_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return shared / "transform_dist" / "dist.json"


@pytest.fixture(scope="session")
def dist_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two-process launch, run once per test session (the first xdist worker to ask runs it, under a lock)."""
    from filelock import FileLock

    out = _dist_results_path(tmp_path_factory)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            script = ROOT / "tests" / "transform_workers" / "dist_matrix.py"
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
            try:
                proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                                      timeout=400, env=env, check=False)
                ok = proc.returncode == 0 and out.exists()
                error = "" if ok else f"exit {proc.returncode}: {proc.stderr[-2000:]}"
            except subprocess.TimeoutExpired:
                error = "no result within 400 s (a collective that never completed?)"
            if error:  # written once, so the other worker reads the failure instead of launching again
                out.write_text(json.dumps({"__launch_error__": error}))
        data: dict[str, Any] = json.loads(out.read_text())
        return data


def _run_dist(subject: str, column: str, results: dict[str, Any]) -> None:
    if "__launch_error__" in results:
        raise RuntimeError(f"the two-process launch failed: {results['__launch_error__']}")
    cell = results[subject][column]
    if not cell["ok"]:
        kind, _, msg = cell["error"].partition(": ")
        exc = getattr(builtins, kind, None)
        text = f"{msg}\n--- rank traceback ---\n{cell.get('traceback', '')}"
        if isinstance(exc, type) and issubclass(exc, Exception):
            raise exc(text)
        raise RuntimeError(f"{kind}: {text}")


def judge(run: Callable[[], None], fragment: str | None) -> str:
    """Run a cell and return its outcome, "right" or "refused: <error>"; raise when it failed.

    ``fragment`` None: the cell must run and be right. Otherwise it must raise an error (not an AssertionError, which
    is a wrong answer, nor a crash) whose message contains ``fragment``; a cell that runs, or refuses with another
    message, fails, so the table changes with the library.
    """
    if fragment is None:
        run()
        return "right"
    try:
        run()
    except (AssertionError, CellCrashed):
        raise
    except Exception as exc:
        if fragment not in str(exc):
            raise AssertionError(f"refused with another message; the table expects {fragment!r}: "
                                 f"{describe(exc)}") from exc
        return f"refused: {describe(exc)}"
    raise AssertionError(f"expected a refusal containing {fragment!r}, but the cell ran; if it is right now, "
                         "remove it from REFUSED")


CASES = [pytest.param(name, col, id=f"{name}-{col}")
         for name, s in SUBJECTS.items() for col in COLUMNS if not_applicable(s, col) is None]


@pytest.mark.parametrize(("subject", "column"), CASES)
def test_transform(subject: str, column: str, request: pytest.FixtureRequest) -> None:
    start = time.perf_counter()

    def run() -> None:
        if column in ("ddp", "fsdp2"):
            _run_dist(subject, column, request.getfixturevalue("dist_results"))
        elif column in ISOLATED:
            run_isolated(run_cell, subject, column)
        else:
            CELLS[column](SUBJECTS[subject])

    try:
        outcome = judge(run, REFUSED.get((subject, column)))
    except BaseException as exc:
        _record(subject, column, "failed", describe(exc), time.perf_counter() - start)
        raise
    kind, _, detail = outcome.partition(": ")
    _record(subject, column, kind, detail, time.perf_counter() - start)


def test_judge_keeps_right_and_refused_apart() -> None:
    def ok() -> None:
        pass

    def refuses() -> None:
        raise NotImplementedError("no ONNX translation for op X; export with dynamo=False instead")

    def wrong() -> None:
        raise AssertionError("output: normwise relative error 1 > tol 1e-5")

    assert judge(ok, None) == "right"
    assert judge(refuses, "no ONNX translation").startswith("refused: NotImplementedError")
    with pytest.raises(NotImplementedError):
        judge(refuses, None)  # an undocumented refusal fails
    with pytest.raises(AssertionError, match="another message"):
        judge(refuses, "something else")
    with pytest.raises(AssertionError, match="but the cell ran"):
        judge(ok, "no ONNX translation")  # a cell that became right must leave the table
    with pytest.raises(AssertionError, match="normwise"):
        judge(wrong, "normwise")  # a wrong answer is never a refusal


def test_isolation_turns_a_crash_into_a_failure() -> None:
    # The mechanism the autocast cells rely on: an abort in the child is reported here, and this process lives on.
    with pytest.raises(CellCrashed, match="SIGABRT"):
        run_isolated(os.abort)
    with pytest.raises(ValueError, match="bad value"):
        run_isolated(_raise_value_error)


def _raise_value_error() -> None:
    raise ValueError("bad value")


def test_every_subject_and_column_is_covered() -> None:
    import rln_verified
    from rln_verified import functional

    layers = {n for n in rln_verified.__all__ if n.endswith(("Norm", "Norm2d", "Linear", "LinearDet", "Conv2d"))} - {
        "BayesianLinear", "BayesianConv2d"}
    assert {s.split("[")[0] for s in SUBJECTS} >= layers | {"BayesianMLP"}
    assert {f"F.{n}" for n in functional.__all__} <= set(SUBJECTS)
    assert {s for s, _ in REFUSED} <= set(SUBJECTS) and {c for _, c in REFUSED} <= set(COLUMNS)
