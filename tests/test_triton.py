"""Runs tests/triton_cells.py, the Triton kernels' checks, in one subprocess under Triton's interpreter.

Triton chooses at import between compiling a kernel for a GPU and interpreting it, so the cells need a process of
their own with ``TRITON_INTERPRET=1``. Triton comes with the ``dev`` extra (through ``triton``); where it is
missing the test skips, unless ``RLN_VERIFIED_REQUIRE_TRITON=1`` (set by ``.ci/run``) makes its absence a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_triton_kernels_under_the_interpreter(request: pytest.FixtureRequest) -> None:
    if importlib.util.find_spec("triton") is None:
        if os.environ.get("RLN_VERIFIED_REQUIRE_TRITON") == "1":
            pytest.fail("RLN_VERIFIED_REQUIRE_TRITON=1 but triton is not installed (pip install -e '.[triton]')")
        pytest.skip("triton is not installed (the triton extra): the Triton kernels are not checked here")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", str(HERE / "triton_cells.py"), "-q", "-p", "no:randomly", "-p",
           "no:xdist", "-W", "ignore::RuntimeWarning"]
    seed = request.config.getoption("hypothesis_seed", None)
    if seed is not None:
        cmd.append(f"--hypothesis-seed={seed}")
    proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"the Triton cells failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
