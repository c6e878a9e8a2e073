"""rln-verify on real, small runs: reports, exit codes, counterexamples, and every bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from rln_verified.cli import main
from rln_verified.verify import _core
from rln_verified.verify._core import Check


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_holding_claim_exits_zero_with_table_and_reports(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    rc, out, err = _run(capsys, "--profile", "dev", "--seed", "3", "--claims", "N1/RLayerNorm", "--dtype",
                        "float32", "--device", "cpu", "--json", str(js), "--markdown", str(md))
    assert rc == 0, out + err
    assert "N1" in out and "RLayerNorm" in out and "holds" in out
    assert "[........................] 0/1" in err and "N1/RLayerNorm cpu float32" in err  # the progress bar
    assert "[########################] 1/1" in err and err.rstrip().endswith("done")
    assert out.splitlines()[0].split() == ["claim", "subject", "device", "dtype", "examples", "worst", "margin",
                                           "verdict"]
    data = json.loads(js.read_text())
    assert data["schema"] == 1 and data["profile"] == "dev" and data["seed"] == 3
    assert data["torch"] == torch.__version__ and data["devices"] == ["cpu"]
    (row,) = data["results"]
    assert row["claim"] == "N1" and row["verdict"] == "holds" and row["dtype"] == "float32"
    assert row["examples_tried"] > 0 and 0 <= row["worst_margin"] <= 1
    text = md.read_text()
    assert "profile: `dev`" in text and torch.__version__ in text and "| N1 | RLayerNorm |" in text


def _broken_check() -> Check:
    # Claims "x <= 10" on [0, 1000]: false, and the minimal counterexample is 11.
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        return float(case) / 10.0

    return Check(claim="TOY-1", subject="toy", strategy=lambda dt: st.integers(0, 1000), run=run,
                 metric="x / 10", dtypes=(torch.float64,))


def test_violation_exits_nonzero_with_shrunk_example(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _core.registered_checks()  # load the built-in checks first, so the toy is added next to them
    check = _broken_check()
    monkeypatch.setitem(_core._REGISTRY, check.key, check)
    rc, out, _ = _run(capsys, "--profile", "dev", "--claims", "TOY-*", "--device", "cpu")
    assert rc == 1
    assert "VIOLATED" in out
    assert "@example(11)" in out  # shrunk by Hypothesis to the smallest violating case


def test_crashing_check_is_a_finding(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _core.registered_checks()

    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        raise RuntimeError("layer blew up")

    check = Check(claim="TOY-2", subject="toy", strategy=lambda dt: st.just(0), run=run, metric="-",
                  dtypes=(torch.float64,))
    monkeypatch.setitem(_core._REGISTRY, check.key, check)
    rc, out, _ = _run(capsys, "--profile", "dev", "--claims", "TOY-2", "--device", "cpu")
    assert rc == 1 and "layer blew up" in out


def test_audit_of_torch_layernorm_finds_overflow(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "audit", "torch.nn:LayerNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8",
                        "--dtype", "float32", "--device", "cpu", "--claims", "N[13]", "--quiet")
    assert rc == 1 and err == ""
    assert "N1/torch.nn:LayerNorm [cpu, float32] VIOLATED" in out and "N3/torch.nn:LayerNorm" in out
    assert "@example(('constant', 0, 0.0, [3e+38," in out  # torch's layer_norm fails at 3e38 in float32


def test_audit_of_rmsnorm_skips_the_centring_claims_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    if not hasattr(nn, "RMSNorm"):
        pytest.skip("this torch has no nn.RMSNorm")
    rc, out, _ = _run(capsys, "audit", "torch.nn:RMSNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8",
                      "eps=1e-5", "--dtype", "float64", "--device", "cpu", "--claims", "N1[0]", "--quiet")
    assert rc == 0, out
    assert "N10/torch.nn:RMSNorm [cpu, float64]: N10 follows from centring" in out
    assert "0 hold, 0 reference self-checks hold (no kernel called), 0 violated, 0 errors, 1 skipped" in out


class _Unknown(nn.Module):
    """A layer the audit knows nothing about: LayerNorm without eps facts or K."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:])


class _Picky(nn.Module):
    """Raises on large inputs, the way a layer with an input check would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 1e10:
            raise ValueError("input too large")
        return nn.functional.layer_norm(x, x.shape[-1:])


class _Crashing(nn.Module):
    """Raises an exception type no check expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 1e10:
            raise ZeroDivisionError("boom")
        return nn.functional.layer_norm(x, x.shape[-1:])


@pytest.fixture
def user_layers(monkeypatch: pytest.MonkeyPatch) -> str:
    mod = types.ModuleType("rlnv_user_layers")
    mod.Unknown = _Unknown  # type: ignore[attr-defined]
    mod.Picky = _Picky  # type: ignore[attr-defined]
    mod.Crashing = _Crashing  # type: ignore[attr-defined]
    mod.not_a_module = lambda: 42  # type: ignore[attr-defined]
    mod.broken = lambda: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_audit_of_unknown_layer_skips_what_needs_its_facts(capsys: pytest.CaptureFixture[str],
                                                           user_layers: str) -> None:
    rc, out, _ = _run(capsys, "audit", f"{user_layers}:Unknown", "--shape", "2,8", "--groups", "last:1",
                      "--dtype", "float64", "--device", "cpu", "--claims", "N[239]", "--quiet")
    assert rc == 0, out
    assert "N3/rlnv_user_layers:Unknown [cpu, float64]: N3 is stated with the layer's eps and its gradient" in out
    assert "N2/rlnv_user_layers:Unknown [cpu, float64]: N2 compares with the layer's formula" in out
    # Stating K makes N3 apply (eps is still unknown, so it stays skipped until the layer has one).
    rc, out, _ = _run(capsys, "audit", f"{user_layers}:Unknown", "--shape", "2,8", "--groups", "last:1",
                      "--gradient-constant", "1", "--dtype", "float64", "--device", "cpu", "--claims", "N9",
                      "--quiet")
    assert rc == 0 and "holds" in out


@pytest.mark.parametrize("layer", ["Picky", "Crashing"])
def test_layer_that_raises_is_a_finding(capsys: pytest.CaptureFixture[str], user_layers: str, layer: str) -> None:
    rc, out, err = _run(capsys, "audit", f"{user_layers}:{layer}", "--shape", "2,8", "--groups", "last:1",
                        "--dtype", "float32", "--device", "cpu", "--claims", "N1", "--quiet")
    assert rc == 1 and err == "" and "Traceback" not in out
    assert "VIOLATED" in out and "@example(" in out
    assert ("input too large" if layer == "Picky" else "ZeroDivisionError: boom") in out


def test_audit_of_our_layer_holds(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "audit", "rln_verified:RLayerNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8",
                      "--dtype", "float32", "--device", "cpu", "--claims", "N1", "--quiet")
    assert rc == 0, out
    assert "holds" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--claims", "NOPE-*"], "matches no claim"),
        (["audit", "no_such_module_xyz:Layer", "--shape", "2,8"], "cannot import"),
        (["audit", "torch.nn:NoSuchLayer", "--shape", "2,8"], "no attribute"),
        (["audit", "builtins:dict", "--shape", "2,8"], "not a torch.nn.Module"),
        (["audit", "rlnv_user_layers:not_a_module", "--shape", "2,8"], "returned int, not a torch.nn.Module"),
        (["audit", "rlnv_user_layers:broken", "--shape", "2,8"], "raised ZeroDivisionError"),
        (["audit", "torch.nn", "--shape", "2,8"], "expected MODULE:FACTORY"),
        (["audit", "torch.nn:LayerNorm"], "--shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "8", "--kwargs", "normalized_shape=8"], "bad --shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8",
          "--gradient-constant", "0.5"], "--gradient-constant"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,8", "--kwargs", "oops"], "bad --kwargs"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8", "--claims", "X9"],
         "matches no claim"),
        (["audit", "rlnv_user_layers:Unknown", "--shape", "2,8"], "cannot infer how"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,x", "--kwargs", "normalized_shape=8"], "bad --shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,-8", "--kwargs", "normalized_shape=8"], "bad --shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,7", "--kwargs", "normalized_shape=8"], "normalized_shape"),
        (["--device", "tpu-42"], "device"),
        (["--device", "mps"], "not supported"),
        (["--profile", "bogus"], "invalid choice"),
        (["--dtype", "float8"], "invalid choice"),
        (["--seed", "x"], "invalid int value"),
        (["--claims", "C1", "--dtype", "bfloat16"], "no selected claim"),
        (["--claims", "PSI-2", "--json", "/nonexistent-folder/r.json"], "does not exist"),
        (["--claims", "PSI-2", "--markdown", "/"], "is a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str,
                                      user_layers: str) -> None:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("rln-verify: error:") and needle in err
    assert "Traceback" not in out + err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_unavailable_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--device", "cuda", "--claims", "N1")
    assert rc == 2 and "not available" in err


def test_console_entry_reports_bad_input_without_traceback() -> None:
    """``python -m rln_verified`` end to end: the exit code and the one line reach the shell."""
    proc = subprocess.run([sys.executable, "-m", "rln_verified", "--claims", "NOPE*"], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "matches no claim" in proc.stderr


def test_seed_reproduces_the_search(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = []
    for i in range(2):
        js = tmp_path / f"r{i}.json"
        rc, _, _ = _run(capsys, "--profile", "dev", "--seed", "1234", "--claims", "PSI-2", "--device", "cpu",
                        "--json", str(js), "--quiet")
        assert rc == 0
        rows.append(json.loads(js.read_text())["results"])
    assert rows[0] == rows[1]


def test_json_schema_keys_are_the_documented_ones(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    _run(capsys, "--claims", "PSI-2", "--device", "cpu", "--json", str(js), "--quiet")
    data = json.loads(js.read_text())
    assert set(data) == {"schema", "profile", "seed", "torch", "hypothesis", "devices", "results"}
    assert set(data["results"][0]) == {"claim", "subject", "device", "dtype", "metric", "examples_tried",
                                       "worst_margin", "verdict", "counterexample", "reason"}
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for key in [*data, *data["results"][0]]:
        assert f"`{key}`" in doc, f"docs/cli.md does not document the JSON key {key!r}"


def test_margin_inf_is_null_in_json() -> None:
    from rln_verified.verify._core import CheckResult
    from rln_verified.verify._report import RunInfo, to_json

    r = CheckResult(check=_broken_check(), device="cpu", dtype=torch.float64, worst_margin=math.inf,
                    counterexample=11)
    row = to_json([r], RunInfo("dev", None, ("cpu",)))["results"][0]
    assert row["worst_margin"] is None and row["verdict"] == "VIOLATED" and row["counterexample"] == "@example(11)"


def _self_check() -> Check:
    # A claim checked without calling any kernel (as PSI-1's series remainder): a reference self-check.
    return Check(claim="TOY-3", subject="reference", strategy=lambda dt: st.just(0), run=lambda c, d, t: 0.5,
                 metric="-", dtypes=(torch.float64,), calls_kernel=False)


def _inapplicable_check() -> Check:
    def run(case: Any, device: torch.device, dtype: torch.dtype) -> float:
        raise _core.NotApplicable("the toy kernel is not built here")

    return Check(claim="TOY-4", subject="toy", strategy=lambda dt: st.just(0), run=run, metric="-",
                 dtypes=(torch.float64,), examples=lambda dt: [0])


def test_self_checks_and_skips_are_never_counted_as_holding(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI line, the JSON and the Markdown count a reference self-check apart from the kernels that hold, and a
    skipped claim as skipped (with its reason), never as holding; the run still exits 0."""
    _core.registered_checks()
    for check in (_self_check(), _inapplicable_check()):
        monkeypatch.setitem(_core._REGISTRY, check.key, check)
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    rc, out, _ = _run(capsys, "--claims", "TOY-[34]", "--device", "cpu", "--json", str(js), "--markdown", str(md),
                      "--quiet")
    assert rc == 0, out
    tally = "0 hold, 1 reference self-checks hold (no kernel called), 0 violated, 0 errors, 1 skipped"
    assert tally in out
    assert "holds (reference self-check)" in out
    assert "TOY-4/toy [cpu, float64]: the toy kernel is not built here" in out
    rows = {r["claim"]: r for r in json.loads(js.read_text())["results"]}
    assert rows["TOY-3"]["verdict"] == "holds (reference self-check)"
    assert rows["TOY-4"]["verdict"] == "skipped" and rows["TOY-4"]["worst_margin"] is None
    assert rows["TOY-4"]["reason"] == "the toy kernel is not built here" and rows["TOY-4"]["examples_tried"] == 0
    text = md.read_text()
    assert f"- verdicts: {tally}" in text
    assert "| TOY-4 | toy | cpu | float64 | - | - | skipped |" in text
    assert "- **TOY-4 / toy** (cpu, float64): skipped; the toy kernel is not built here" in text


def test_status_of_each_outcome() -> None:
    """Each outcome has one status, read from the result's fields (no parsing of message text): a skip is never
    a pass whatever its margin, a NaN margin is a violation, an error without a counterexample is an error."""
    from rln_verified.verify._core import CheckResult, Status, run_check

    def res(**kw: Any) -> CheckResult:
        return CheckResult(check=_broken_check(), device="cpu", dtype=torch.float64, **kw)

    assert res(worst_margin=0.5).status is Status.HOLDS and res(worst_margin=0.5).passed
    assert res(worst_margin=0.5, skip_reason="x").status is Status.SKIPPED
    assert not res(worst_margin=0.5, skip_reason="x").passed
    assert res(worst_margin=math.nan).status is Status.VIOLATED
    assert res(worst_margin=0.5, counterexample=3).status is Status.VIOLATED
    assert res(worst_margin=0.5, error="HealthCheck").status is Status.ERROR
    ok = CheckResult(check=_self_check(), device="cpu", dtype=torch.float64, worst_margin=0.5)
    assert ok.status is Status.SELF_CHECK and ok.passed
    skipped = run_check(_inapplicable_check(), "cpu", torch.float64)
    assert skipped.status is Status.SKIPPED and skipped.skip_reason == "the toy kernel is not built here"
    assert skipped.error is None


def test_fused_kernel_checks_report_skipped_where_the_kernel_is_off(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    """N11, RELU-6 and EXP-1 with the fused kernels switched off: skipped with the reason, 0 hold, exit 0."""
    from rln_verified._native import gauss, rnorm

    js = tmp_path / "r.json"
    with rnorm.disabled(), gauss.disabled():
        for pattern in ("N11/RLayerNorm", "RELU-6", "EXP-1"):
            rc, out, _ = _run(capsys, "--claims", pattern, "--device", "cpu", "--json", str(js), "--quiet")
            assert rc == 0 and "0 hold," in out and "0 violated, 0 errors, 1 skipped" in out, out
            (row,) = json.loads(js.read_text())["results"]
            assert row["verdict"] == "skipped" and "not in use here" in row["reason"], row


def test_exp1_sweep_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """EXP-1's sweep of the std's range is named in the output and the Markdown: every 257th float32 outside the
    thorough profile (the thorough profile, ``make verify-thorough``, enumerates every one)."""
    from rln_verified._native import gauss

    if not gauss.available():
        pytest.skip(f"the fused float32 kernel is not in use here: {gauss.reason()}")
    md = tmp_path / "r.md"
    rc, out, _ = _run(capsys, "--claims", "EXP-1", "--device", "cpu", "--markdown", str(md), "--quiet")
    assert rc == 0, out
    assert "every 257th float32 of [-21.834136962890625, 11.090354919433594]" in out
    assert "## Sweeps" in md.read_text() and "every one under --profile thorough" in md.read_text()


def test_claims_glob_ignores_case(capsys: pytest.CaptureFixture[str]) -> None:
    """``--claims psi-2`` selects PSI-2, as ``--claims PSI-2`` does (claim IDs are upper case; a lower-case glob
    matched nothing)."""
    rc, out, _ = _run(capsys, "--claims", "psi-2", "--quiet")
    assert rc == 0 and "PSI-2" in out
