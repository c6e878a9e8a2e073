"""Building and loading the C kernels of this package (shared by ``rnorm.py`` and ``gauss.py``).

Each source is compiled once per machine with the system C compiler into a cache folder (``$RLN_VERIFIED_CACHE``,
else ``$XDG_CACHE_HOME/rln_verified``, else ``~/.cache/rln_verified``) and loaded with ctypes. The sources need no
Python or torch headers and build in under a second. When no compiler is found, the build fails, or
``RLN_VERIFIED_NATIVE=0`` is set, a kernel is unavailable and its callers use their eager path.

Two more switches (each ``0`` or ``1``; unset means ``0``):

- ``RLN_VERIFIED_REQUIRE_NATIVE=1``: a kernel that cannot be built or loaded raises :class:`NativeBuildError` (with
  the compiler's message) instead of falling back, and ``RLN_VERIFIED_NATIVE=0`` is an error. ``make test`` sets it
  wherever a C compiler exists, so a broken kernel fails the run rather than skipping its tests.
- ``RLN_VERIFIED_SANITIZE=1``: build with AddressSanitizer and UBSan (:data:`SANITIZE_FLAGS`), cached apart from the
  normal build. Python must then run with the ASan runtime preloaded, as ``make sanitize`` does:
  ``LD_PRELOAD=$(cc -print-file-name=libasan.so)``.

Concurrent builders (pytest-xdist workers, several processes on first use) are safe: each compiles into its own
temporary folder inside the cache and moves the result into place with one atomic ``os.replace``, so a reader sees
either no file or a complete one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

NATIVE_ENV = "RLN_VERIFIED_NATIVE"
REQUIRE_ENV = "RLN_VERIFIED_REQUIRE_NATIVE"
SANITIZE_ENV = "RLN_VERIFIED_SANITIZE"

# -ffp-contract=off: the compiler fuses no product into a sum on its own, so every operation is rounded where the
# source says; an fma() written in a source rounds once, inside the count of the two operations it replaces.
# -march=native: the build is cached per machine (the key includes the CPU's name and feature flags).
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off", "-pthread", "-fopenmp-simd",
         "-march=native"]

# The sanitizer build: FLAGS with -O3 replaced by these. -O1 -g -fno-omit-frame-pointer give exact stack traces;
# -fno-sanitize-recover=all makes every UBSan finding fatal, as every ASan finding is.
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all"]


class NativeBuildError(RuntimeError):
    """A C kernel could not be built or loaded while ``RLN_VERIFIED_REQUIRE_NATIVE=1`` demands it."""


def switch(name: str) -> bool:
    """The value of an on/off environment switch: unset, empty or ``0`` is off, ``1`` is on."""
    value = os.environ.get(name, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{name}={value!r}: set it to 1 (on) or 0 (off), or leave it unset")


def required() -> bool:
    """``RLN_VERIFIED_REQUIRE_NATIVE=1``: a kernel that cannot be had is an error, not a fallback."""
    return switch(REQUIRE_ENV)


def sanitized() -> bool:
    """``RLN_VERIFIED_SANITIZE=1``: the kernels are built with AddressSanitizer and UBSan."""
    return switch(SANITIZE_ENV)


def off_by_request() -> bool:
    """``RLN_VERIFIED_NATIVE=0``: the kernels are switched off and every caller uses its eager path."""
    return os.environ.get(NATIVE_ENV, "1").strip() == "0"


def settings_problem() -> str | None:
    """Why the switches contradict each other, or None. The test session refuses to start on such a message."""
    if required() and off_by_request():
        return (f"{REQUIRE_ENV}=1 demands the C kernels but {NATIVE_ENV}=0 switches them off: unset one of the two "
                f"(to test the eager paths alone, run with {REQUIRE_ENV}=0 {NATIVE_ENV}=0)")
    return None


def compile_flags() -> list[str]:
    """The compiler flags in force: :data:`FLAGS`, or the sanitizer build's under ``RLN_VERIFIED_SANITIZE=1``."""
    if sanitized():
        return [f for f in FLAGS if not f.startswith("-O")] + SANITIZE_FLAGS
    return list(FLAGS)


def compiler() -> str:
    """``$CC``, else the first of cc, gcc and clang on PATH."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    return cc


def asan_runtime_loaded() -> bool:
    """True when the AddressSanitizer runtime is mapped into this process (it must be loaded before any library
    built with -fsanitize=address; a later dlopen of one makes the runtime end the process)."""
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return "asan" in os.environ.get("LD_PRELOAD", "")


def cache_dir() -> Path:
    env = os.environ.get("RLN_VERIFIED_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rln_verified"


def cpu_id() -> str:
    """The CPU's model name and feature flags (a -march=native build is only reused on the same kind of CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def build(src: Path, flags: Sequence[str] | None = None) -> Path:
    """Compile ``src`` into a shared library in :func:`cache_dir` (once per source text, compiler, flags and machine)
    and return its path. ``flags`` defaults to :func:`compile_flags`. Raises RuntimeError with the compiler's message
    when the compile fails. Safe when several processes or threads build the same source at once."""
    cc = compiler()
    flags = compile_flags() if flags is None else list(flags)
    key = hashlib.sha256(src.read_bytes() + " ".join([cc, *flags, platform.machine(), sys.platform, cpu_id()]).encode())
    tag = "-asan" if any(f.startswith("-fsanitize=") for f in flags) else ""
    out = cache_dir() / f"{src.stem}{tag}-{key.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / out.name
            proc = subprocess.run([cc, *flags, str(src), "-o", str(part), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed on {src.name} (exit {proc.returncode}): {proc.stderr.strip()[:2000]}")
            os.replace(part, out)  # atomic: concurrent builders never see a partial file
    return out


def ptr(t: torch.Tensor | None) -> int | None:
    """The data pointer of a tensor, or None (a NULL pointer) for an absent one."""
    return None if t is None else int(t.data_ptr())


class Kernel:
    """One C source of this package: built and loaded on first use, switchable off for a block (:meth:`disabled`).

    ``abi_symbol`` names a C function returning the ABI version; a cached build that answers another version is
    rejected. ``setup`` declares the ctypes signatures (and may raise ``RuntimeError`` to reject the library).
    ``src_dir`` (default: this package's folder) lets a test build a modified copy of a source.
    """

    def __init__(self, source: str, abi_symbol: str, abi: int, setup: Callable[[ctypes.CDLL], None], *,
                 src_dir: Path | None = None) -> None:
        self.src = (src_dir if src_dir is not None else Path(__file__).parent) / source
        self.abi_symbol, self.abi, self.setup = abi_symbol, abi, setup
        self.path: Path | None = None  # the loaded shared library
        self.flags: list[str] = []  # the flags it was built with
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._raise = False  # the attempt failed under RLN_VERIFIED_REQUIRE_NATIVE=1: every later call raises too
        self._why = "not built yet"
        self._off = 0  # depth of active `disabled()` blocks

    def _build(self) -> ctypes.CDLL:
        flags = compile_flags()
        out = build(self.src, flags)
        if any(f.startswith("-fsanitize=") for f in flags) and not asan_runtime_loaded():
            raise RuntimeError(f"{SANITIZE_ENV}=1 builds with AddressSanitizer, whose runtime must be loaded before "
                               "the kernel: run Python under LD_PRELOAD=$(cc -print-file-name=libasan.so), as "
                               "`make sanitize` does")
        lib = ctypes.CDLL(str(out))
        if getattr(lib, self.abi_symbol)() != self.abi:
            raise RuntimeError(f"stale native kernel at {out}")
        self.setup(lib)
        self.path, self.flags = out, flags
        return lib

    def library(self) -> ctypes.CDLL | None:
        """The loaded kernel, building it on first call; None when it cannot be had (see :meth:`reason`). Under
        ``RLN_VERIFIED_REQUIRE_NATIVE=1`` that case raises :class:`NativeBuildError` instead, on every call."""
        if self._tried:
            if self._raise:
                raise NativeBuildError(self._why)
            return self._lib
        with self._lock:
            if not self._tried:
                must = required()
                if off_by_request():
                    self._why = f"disabled by {NATIVE_ENV}=0"
                    if must:
                        self._why = f"{self.src.name}: {settings_problem()}"
                else:
                    try:
                        self._lib = self._build()
                        sanitizer = any(f.startswith("-fsanitize=") for f in self.flags)
                        self._why = "built with AddressSanitizer and UBSan" if sanitizer else "built"
                    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
                        self._why = f"unavailable: {exc}"
                        if must:
                            self._why = f"{self.src.name} could not be built or loaded ({REQUIRE_ENV}=1): {exc}"
                self._raise = must and self._lib is None
                self._tried = True
        if self._raise:
            raise NativeBuildError(self._why)
        return self._lib

    def available(self) -> bool:
        """True when the kernel is built and not switched off by :meth:`disabled`."""
        return self._off == 0 and self.library() is not None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Route every call through the eager path inside this block (tests compare the two paths)."""
        self._off += 1
        try:
            yield
        finally:
            self._off -= 1

    def reason(self) -> str:
        """Why the kernel is or is not in use, for reports."""
        with contextlib.suppress(NativeBuildError):
            self.library()
        return self._why


__all__ = ["FLAGS", "NATIVE_ENV", "REQUIRE_ENV", "SANITIZE_ENV", "SANITIZE_FLAGS", "Kernel", "NativeBuildError",
           "asan_runtime_loaded", "build", "cache_dir", "compile_flags", "compiler", "cpu_id", "off_by_request",
           "ptr", "required", "sanitized", "settings_problem", "switch"]
