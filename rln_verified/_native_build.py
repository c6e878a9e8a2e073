"""Building and loading the C kernels under ``_native/`` (shared by ``_native.py`` and ``_native_gauss.py``).

Each source is compiled once per machine with the system C compiler into a cache folder (``$RLN_VERIFIED_CACHE``,
else ``$XDG_CACHE_HOME/rln_verified``, else ``~/.cache/rln_verified``) and loaded with ctypes. The sources need no
Python or torch headers and build in under a second. When no compiler is found, the build fails, or
``RLN_VERIFIED_NATIVE=0`` is set, a kernel is unavailable and its callers use their eager path.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# -ffp-contract=off: the compiler fuses no product into a sum on its own, so every operation is rounded where the
# source says; an fma() written in a source rounds once, inside the count of the two operations it replaces.
# -march=native: the build is cached per machine (the key includes the CPU's name and feature flags).
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off", "-pthread", "-fopenmp-simd",
         "-march=native"]


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


def ptr(t: torch.Tensor | None) -> int | None:
    """The data pointer of a tensor, or None (a NULL pointer) for an absent one."""
    return None if t is None else int(t.data_ptr())


_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def plain_f32(*tensors: torch.Tensor | None) -> bool:
    """Every tensor given is a float32 CPU tensor not wrapped by torch.func (vmap, grad, jacrev); None counts."""
    for t in tensors:  # a loop, not all(...): this runs on every layer call  # noqa: SIM110
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or _wrapped(t)):
            return False
    return True


class Kernel:
    """One C source of ``_native/``: built and loaded on first use, switchable off for a block (:meth:`disabled`).

    ``abi_symbol`` names a C function returning the ABI version; a cached build that answers another version is
    rejected. ``setup`` declares the ctypes signatures (and may raise ``RuntimeError`` to reject the library).
    """

    def __init__(self, source: str, abi_symbol: str, abi: int, setup: Callable[[ctypes.CDLL], None]) -> None:
        self.src = Path(__file__).with_name("_native") / source
        self.abi_symbol, self.abi, self.setup = abi_symbol, abi, setup
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._why = "not built yet"
        self._off = 0  # depth of active `disabled()` blocks

    def _build(self) -> ctypes.CDLL:
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
        key = hashlib.sha256(self.src.read_bytes()
                             + " ".join([cc, *FLAGS, platform.machine(), sys.platform, cpu_id()]).encode())
        out = cache_dir() / f"{self.src.stem}-{key.hexdigest()[:16]}.so"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                part = Path(tmp) / out.name
                proc = subprocess.run([cc, *FLAGS, str(self.src), "-o", str(part), "-lm"], capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
                os.replace(part, out)  # atomic: concurrent builders never see a partial file
        lib = ctypes.CDLL(str(out))
        if getattr(lib, self.abi_symbol)() != self.abi:
            raise RuntimeError(f"stale native kernel at {out}")
        self.setup(lib)
        return lib

    def library(self) -> ctypes.CDLL | None:
        """The loaded kernel, building it on first call; None when it cannot be had (see :meth:`reason`)."""
        if self._tried:
            return self._lib
        with self._lock:
            if not self._tried:
                if os.environ.get("RLN_VERIFIED_NATIVE", "1") == "0":
                    self._why = "disabled by RLN_VERIFIED_NATIVE=0"
                else:
                    try:
                        self._lib = self._build()
                        self._why = "built"
                    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                        self._why = f"unavailable: {exc}"
                self._tried = True
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
        self.library()
        return self._why


__all__ = ["FLAGS", "Kernel", "cache_dir", "cpu_id", "plain_f32", "ptr"]
