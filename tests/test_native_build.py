"""Building the C kernels (rln_verified/_native/toolchain.py): a failure is loud where the kernels are required, the
sanitizer build is what runs under ``make sanitize``, and concurrent builders share one complete library.

None of these tests is skipped because a kernel is unavailable: that is what several of them check.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rln_verified import _native
from rln_verified._native import gauss, rnorm, toolchain
from rln_verified._native.toolchain import (
    FLAGS,
    NATIVE_ENV,
    REQUIRE_ENV,
    SANITIZE_ENV,
    Kernel,
    NativeBuildError,
    build,
    compile_flags,
)

KERNELS = _native.KERNELS
ROOT = Path(__file__).resolve().parents[1]
SANITIZE_RUN = toolchain.sanitized()  # read before any test clears the switches


def _has_compiler() -> bool:
    try:
        toolchain.compiler()
    except RuntimeError:
        return False
    return True


needs_cc = pytest.mark.skipif(not _has_compiler(), reason="no C compiler here: nothing to build")
# Tests of Python-side logic that start whole new interpreters: slow under ASan and no C kernel code in them.
not_in_sanitize_run = pytest.mark.skipif(SANITIZE_RUN, reason="no kernel code runs here; the normal run covers it")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No switch set, and a private cache, so a test's builds neither see nor leave anything elsewhere."""
    for name in (NATIVE_ENV, REQUIRE_ENV, SANITIZE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RLN_VERIFIED_CACHE", str(tmp_path / "cache"))
    return monkeypatch


def _broken_copy(name: str, where: Path) -> Kernel:
    """A kernel like the real one, over a copy of its source with a syntax error on the first line."""
    real = KERNELS[name]
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text("int rln_injected_syntax_error = ;\n" + real.src.read_text())
    return Kernel(name, real.abi_symbol, real.abi, real.setup, src_dir=where)


# ---- the switches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("1", True), (" 1 ", True)])
def test_switch_reads_zero_and_one(clean_env: pytest.MonkeyPatch, value: str, on: bool) -> None:
    clean_env.setenv(REQUIRE_ENV, value)
    assert toolchain.switch(REQUIRE_ENV) is on


@pytest.mark.parametrize("value", ["yes", "true", "2", "on"])
def test_switch_refuses_other_values(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv(SANITIZE_ENV, value)
    with pytest.raises(ValueError, match=f"{SANITIZE_ENV}='{value}'.*1.*0"):
        toolchain.sanitized()


# ---- a build failure: an error where required, a stated fallback elsewhere ------------------------------------------


@needs_cc
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_broken_source_raises_when_required(clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    clean_env.setenv(REQUIRE_ENV, "1")
    kernel = _broken_copy(name, tmp_path / "src")
    with pytest.raises(NativeBuildError) as err:
        kernel.library()
    msg = str(err.value)
    # the compiler's own diagnostic (gcc and clang both say "expected expression" here) and which source failed
    assert "expected expression" in msg and name in msg and REQUIRE_ENV in msg, msg
    with pytest.raises(NativeBuildError):  # every later use raises too: nothing falls back quietly
        kernel.available()
    assert not list((tmp_path / "cache").glob("*.so")), "a failed build left a library in the cache"


@needs_cc
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_broken_source_falls_back_and_says_why(clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    kernel = _broken_copy(name, tmp_path / "src")
    assert kernel.library() is None and not kernel.available()
    why = kernel.reason()
    assert why.startswith("unavailable:") and "expected expression" in why, why


@needs_cc
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_unbroken_copy_builds(clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    """The control for the two tests above: the same copy without the injected line builds and loads."""
    real = KERNELS[name]
    (tmp_path / name).write_text(real.src.read_text())
    clean_env.setenv(REQUIRE_ENV, "1")
    kernel = Kernel(name, real.abi_symbol, real.abi, real.setup, src_dir=tmp_path)
    if SANITIZE_RUN:  # the sanitizer run: built alike, and loadable because ASan is preloaded
        clean_env.setenv(SANITIZE_ENV, "1")
    assert kernel.library() is not None, kernel.reason()
    assert kernel.path is not None and kernel.path.parent == tmp_path / "cache"


def test_off_by_request_is_an_error_when_required(clean_env: pytest.MonkeyPatch) -> None:
    real = KERNELS["rnorm.c"]
    clean_env.setenv(NATIVE_ENV, "0")
    quiet = Kernel("rnorm.c", real.abi_symbol, real.abi, real.setup)
    assert quiet.library() is None and quiet.reason() == f"disabled by {NATIVE_ENV}=0"
    assert toolchain.settings_problem() is None
    clean_env.setenv(REQUIRE_ENV, "1")
    loud = Kernel("rnorm.c", real.abi_symbol, real.abi, real.setup)
    with pytest.raises(NativeBuildError, match=f"{REQUIRE_ENV}=1.*{NATIVE_ENV}=0"):
        loud.library()
    problem = toolchain.settings_problem()
    assert problem is not None and REQUIRE_ENV in problem and NATIVE_ENV in problem


@not_in_sanitize_run
def test_test_session_refuses_required_but_off(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The session-level check (tests/conftest.py): with both switches set, pytest stops before running a test, with
    the reason, instead of skipping the kernel tests and passing."""
    env = {**os.environ, REQUIRE_ENV: "1", NATIVE_ENV: "0"}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "--co",
                           "tests/test_native_build.py::test_switch_reads_zero_and_one"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"{REQUIRE_ENV}=1" in out and f"{NATIVE_ENV}=0" in out, out


# ---- where a compiler exists, both kernels are the ones in use ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_both_kernels_in_use_where_a_compiler_exists(name: str) -> None:
    kernel = KERNELS[name]
    if toolchain.off_by_request() and not toolchain.required():
        pytest.skip(f"{NATIVE_ENV}=0: the kernels are off by request")
    if not _has_compiler() and not toolchain.required():
        pytest.skip("no C compiler here")
    # With a compiler (or under RLN_VERIFIED_REQUIRE_NATIVE=1), a kernel that did not build fails here.
    assert kernel.available(), kernel.reason()
    assert kernel.path is not None and kernel.flags == compile_flags()


def _cpu_has_avx512f() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(ln.startswith("flags") and "avx512f" in ln.split() for ln in text.splitlines())


def test_vector_paths_in_use_where_the_cpu_has_avx512() -> None:
    """rnorm.c's 8-lane vector paths are compiled exactly when the -march=native build targets AVX-512: a build that
    lost them (a flag or a macro gone wrong) falls back to the flat loops silently, with the same values, so only
    this test notices."""
    if not rnorm.available():
        pytest.skip(f"the R-LayerNorm kernel is not in use here: {rnorm.reason()}")
    if "-march=native" not in compile_flags():
        pytest.skip("not a -march=native build")
    assert rnorm.vector_paths() == _cpu_has_avx512f()


def test_the_package_answers_for_every_kernel() -> None:
    """_native.available() is every kernel's answer together, and reason() names each kernel with its own reason, so a
    report can never show one kernel in use while another silently fell back."""
    assert set(KERNELS) == {p.name for p in Path(_native.__file__).parent.glob("*.c")}, "a C source with no Kernel"
    assert KERNELS["rnorm.c"] is rnorm.KERNEL and KERNELS["gauss.c"] is gauss.KERNEL
    lines = _native.reason().splitlines()
    assert lines == [f"{name}: {k.reason()}" for name, k in KERNELS.items()]
    assert _native.available() == all(k.available() for k in KERNELS.values())
    if _native.available():
        with gauss.disabled():
            assert not _native.available() and rnorm.available()


# ---- the sanitizer build ------------------------------------------------------------------------------------------


def _asan_runtime() -> str | None:
    try:
        cc = toolchain.compiler()
        path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except (RuntimeError, OSError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_sanitize_flags(clean_env: pytest.MonkeyPatch) -> None:
    assert compile_flags() == FLAGS
    clean_env.setenv(SANITIZE_ENV, "1")
    flags = compile_flags()
    for f in ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g"):
        assert f in flags
    assert [f for f in flags if f.startswith("-O")] == ["-O1"]
    assert set(FLAGS) - {"-O3"} <= set(flags)  # same language, rounding (-ffp-contract=off) and target


_OOB_C = """
#include <limits.h>
#include <stdlib.h>
int rln_heap_read_past_end(int n) {  /* reads one int past an n-int block */
    int *a = (int *)malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; ++i) a[i] = i;
    int v = a[n];
    free(a);
    return v;
}
int rln_signed_overflow(int x) { return x + 1; }
int rln_fine(int n) {
    int *a = (int *)malloc(sizeof(int) * (size_t)n), s = 0;
    for (int i = 0; i < n; ++i) a[i] = i;
    for (int i = 0; i < n; ++i) s += a[i];
    free(a);
    return s;
}
"""


@needs_cc
def test_sanitized_build_is_separate_and_needs_the_runtime(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under RLN_VERIFIED_SANITIZE=1 a kernel builds into its own cache entry; without the ASan runtime preloaded it
    is refused with the fix (a dlopen would end the process) instead of crashing."""
    if _asan_runtime() is None:
        pytest.skip("this compiler has no AddressSanitizer runtime (libasan.so)")
    src = tmp_path / "probe.c"
    src.write_text(_OOB_C)
    normal = build(src, FLAGS)
    clean_env.setenv(SANITIZE_ENV, "1")
    asan = build(src)
    assert normal != asan and "-asan-" in asan.name and asan.parent == normal.parent
    if toolchain.asan_runtime_loaded():
        return  # the sanitizer run itself: the refusal below cannot be seen from here
    real = KERNELS["rnorm.c"]
    kernel = Kernel("rnorm.c", real.abi_symbol, real.abi, real.setup)
    assert kernel.library() is None
    assert "LD_PRELOAD" in kernel.reason() and "make sanitize" in kernel.reason()


@pytest.mark.skipif(not SANITIZE_RUN, reason=f"{SANITIZE_ENV} is not set (make sanitize sets it)")
class TestSanitizerRun:
    """Run by ``make sanitize``: proof that the mode is on and that a memory error in the kernels would be caught."""

    def test_kernels_are_the_sanitized_build(self) -> None:
        assert toolchain.asan_runtime_loaded()
        for kernel in KERNELS.values():
            assert kernel.available(), kernel.reason()
            assert kernel.path is not None and "-asan-" in kernel.path.name
            assert "-fsanitize=address,undefined" in kernel.flags
            assert kernel.reason() == "built with AddressSanitizer and UBSan"

    @pytest.mark.parametrize("call, report", [
        ("rln_heap_read_past_end(5)", "AddressSanitizer: heap-buffer-overflow"),
        ("rln_signed_overflow(2147483647)", "signed integer overflow"),
    ])
    def test_a_memory_error_built_the_same_way_is_caught(self, tmp_path: Path, call: str, report: str) -> None:
        src = tmp_path / "probe.c"
        src.write_text(_OOB_C)
        lib = build(src)  # the flags the kernels were built with
        code = f"import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); print(lib.rln_fine(5)); lib.{call}"
        proc = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == "10", proc.stdout + proc.stderr  # the library loaded and ran clean code
        assert proc.returncode != 0 and report in proc.stderr, proc.stderr


# ---- concurrent builders ------------------------------------------------------------------------------------------


@needs_cc
def test_concurrent_builds_share_one_complete_library(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pytest-xdist workers build at once: each compiles in a private folder and renames atomically, so every builder
    returns the same complete library and no partial file or temporary folder is left behind."""
    src = tmp_path / "probe.c"
    src.write_text(_OOB_C)
    n = 4
    barrier = threading.Barrier(n)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            paths.append(build(src, FLAGS))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(paths) == n and len(set(paths)) == 1
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == [paths[0].name]
    assert ctypes.CDLL(str(paths[0])).rln_fine(5) == 10


@needs_cc
@not_in_sanitize_run
def test_concurrent_processes_build_the_kernel(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same with separate processes building the real kernel into an empty cache, as xdist workers do."""
    code = ("import sys; from rln_verified._native import gauss as g; lib = g.library(); "
            "assert lib is not None, g.reason(); print(g.KERNEL.path)")
    env = {**os.environ, "RLN_VERIFIED_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert len({out.strip() for out, _ in outs}) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(outs[0][0].strip()).name]
