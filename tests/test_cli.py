"""rln-verify on real, small runs: reports, exit codes, counterexamples, and every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

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
    assert "N1/RLayerNorm cpu float32" in err  # progress on stderr
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


def test_audit_of_torch_layernorm_finds_overflow_and_lists_skips(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "audit", "torch.nn:LayerNorm", "--shape", "2,8", "--kwargs", "normalized_shape=8",
                      "--dtype", "float32", "--device", "cpu", "--claims", "N[13]", "--quiet")
    assert rc == 1
    assert "N1" in out and "VIOLATED" in out and "@example(" in out
    assert "skipped" in out and "N3/torch.nn:LayerNorm" in out  # with its reason


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
        (["audit", "torch.nn:LayerNorm", "--shape", "2,x", "--kwargs", "normalized_shape=8"], "bad --shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,-8", "--kwargs", "normalized_shape=8"], "bad --shape"),
        (["audit", "torch.nn:LayerNorm", "--shape", "2,7", "--kwargs", "normalized_shape=8"], "normalized_shape"),
        (["--device", "tpu-42"], "device"),
        (["--profile", "bogus"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("rln-verify: error:") and needle in err
    assert "Traceback" not in out + err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_unavailable_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--device", "cuda", "--claims", "N1")
    assert rc == 2 and "not available" in err


def test_margin_inf_is_null_in_json() -> None:
    from rln_verified.verify._core import CheckResult
    from rln_verified.verify._report import RunInfo, to_json

    r = CheckResult(check=_broken_check(), device="cpu", dtype=torch.float64, worst_margin=math.inf,
                    counterexample=11)
    row = to_json([r], RunInfo("dev", None, ("cpu",)))["results"][0]
    assert row["worst_margin"] is None and row["verdict"] == "VIOLATED" and row["counterexample"] == "@example(11)"


def test_quickstart_runs() -> None:
    """The code block of docs/quickstart.md runs as written."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/quickstart.md has no python block"
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(blocks), "docs/quickstart.md", "exec"), namespace)
    assert namespace["logits"].shape == (4, 10)
    assert len(namespace["uncertainty"]) == 2
