"""Run a function in a child process forked from a server that has torch and the test helpers imported, so a crash
(a segfault or an abort in a C kernel) fails that one call and not the test run.

The server is multiprocessing's ``forkserver``: it imports the preloaded modules once and runs no torch operation,
so forking it is safe (no thread pool to inherit) and each child starts in milliseconds instead of importing torch.
"""

from __future__ import annotations

import builtins
import multiprocessing as mp
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_PRELOAD = ["torch", "rln_verified", "_transform_cells"]
_ctx: Any = None


class CellCrashed(RuntimeError):
    """The child process died without reporting (a signal or an exit from C)."""


def _context() -> Any:
    global _ctx
    if _ctx is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _ctx = ctx
    return _ctx


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import traceback

    try:
        fn(*args)
        conn.send(("ok", "", ""))
    except BaseException as exc:  # reported to the parent, which raises it there
        conn.send((type(exc).__name__, str(exc), traceback.format_exc()))
    conn.close()


def run_cell(subject: str, column: str) -> None:
    """The matrix cell, by name (what the child runs)."""
    from _transform_cases import SUBJECTS
    from _transform_cells import CELLS

    CELLS[column](SUBJECTS[subject])


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 300.0) -> None:
    """Call ``fn(*args)`` in a forked child; re-raise its exception here (same builtin type, same message), or
    :class:`CellCrashed` if it died."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args))
    proc.start()
    send.close()
    got: tuple[str, str, str] | None = None
    try:
        if recv.poll(timeout):
            got = recv.recv()
    except EOFError:
        got = None
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if got is None:
        code = proc.exitcode
        how = f"signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0 else f"exit code {code}"
        raise CellCrashed(f"the cell's process died without a result: {how}")
    kind, msg, tb = got
    if kind == "ok":
        return
    exc_type = getattr(builtins, kind, None)
    if isinstance(exc_type, type) and issubclass(exc_type, Exception):
        raise exc_type(f"{msg}\n--- in the child process ---\n{tb}")
    raise RuntimeError(f"{kind}: {msg}\n--- in the child process ---\n{tb}")


__all__ = ["CellCrashed", "run_cell", "run_isolated"]
