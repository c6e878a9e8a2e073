"""mutmut 3 over the Python kernels, one module at a time with the module's fast test selection
(``tests/mutation/selection.toml``), in a scratch copy of the working tree.

    .venv/bin/python tests/mutation/run_mutmut.py                   # special, gaussian, norm, bayesian_linear
    .venv/bin/python tests/mutation/run_mutmut.py special --max-children 2

mutmut 3 reads its configuration from ``[tool.mutmut]`` of the ``pyproject.toml`` in the folder it runs in and writes
its mutated copy to ``mutants/`` there. The checkout is never that folder: each module gets a scratch copy whose
``pyproject.toml`` gains a ``[tool.mutmut]`` section naming the module (``only_mutate``) and its selection
(``pytest_add_cli_args_test_selection``). Workers are forked from mutmut's process (``process_isolation = "fork"``)
with one OpenMP thread, so no thread pool exists to break in the child; in this mode each mutant's tests run
fastest first (the forkserver mode runs them in set order), so a killed mutant usually stops within seconds.
Results (``mutmut results --all true``) go to ``build/mutation/mutmut-<module>.txt`` and a
summary to ``build/mutation/mutmut.json``.

Outcomes as mutmut names them: killed, survived, timeout, suspicious, no tests (not covered by the selection),
skipped, segfault. A timeout is a survivor unless ``mutmut run <name>`` on it shows a failing test.

Score per module, as for the scripted mutants: killed / (mutants - equivalent survivors), where a survivor is
equivalent only when ``tests/mutation/mutmut-equivalent/<module>.toml`` lists it with a reason. "no tests" (the
selection never reaches the mutated function) and timeouts count as survivors; mutants left unchecked at the time
limit are reported and make the run fail. The exit status is 1 when a module scores below 90%. ``--recheck`` reruns
only the mutants the last full run did not kill (after tests were added, the kernel source unchanged).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from run_scripted import ROOT, snapshot

HERE = Path(__file__).resolve().parent
PYTHON_MODULES = ("special", "gaussian", "norm", "bayesian_linear")


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def mutmut_section(sel: dict[str, object], profile: str) -> str:
    tests = [str(t) for t in sel["tests"]]  # type: ignore[union-attr]
    k = str(sel.get("k", ""))
    selection = tests + (["-k", k] if k else [])
    return "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["rln_verified/"]',
        f"only_mutate = {toml_list(list(sel['sources']))}",  # type: ignore[call-overload]
        f"pytest_add_cli_args = {toml_list(['-p', 'no:randomly', '--hypothesis-seed=0', '-q'])}",
        f"pytest_add_cli_args_test_selection = {toml_list(selection)}",
        f"also_copy = {toml_list(['proofs/', 'docs/', 'benchmarks/', 'README.md', 'CHANGELOG.md'])}",
        'process_isolation = "fork"',
        "use_git_change_detection = false",
        "timeout_multiplier = 5.0",
        "timeout_constant = 10.0",
        "",
    ]) + f"# HYPOTHESIS_PROFILE={profile}\n"


def count(results: str) -> dict[str, int]:
    tally: dict[str, int] = {}
    for line in results.splitlines():
        m = re.match(r"\s*(\S+):\s*(.+?)\s*$", line)
        if m and "__mutmut_" in m.group(1):
            tally[m.group(2)] = tally.get(m.group(2), 0) + 1
    return tally


def sources_digest(sel: dict[str, object]) -> str:
    """A digest of the module's code (its syntax tree: comments and layout do not change mutmut's mutants)."""
    h = hashlib.sha256()
    for src in sel["sources"]:  # type: ignore[attr-defined]
        h.update(ast.dump(ast.parse((ROOT / str(src)).read_text())).encode())
    return h.hexdigest()[:16]


def run_module(mod: str, sel: dict[str, object], profile: str, max_children: int, limit: float,
               out: Path, names: list[str] | None = None) -> dict[str, object]:
    """mutmut over one module; ``names``: only these mutants (a recheck), else all."""
    scratch = Path(tempfile.mkdtemp(prefix=f"rln-mutmut-{mod}-"))
    try:
        snapshot(scratch)
        with (scratch / "pyproject.toml").open("a") as f:
            f.write(mutmut_section(sel, profile))
        env = dict(os.environ)
        # One OpenMP thread: mutmut forks each mutant's worker from a process that has already run torch, and a
        # forked child of a process with a live OpenMP pool can hang on its first parallel op (such mutants ended
        # as timeouts although their tests fail at once when run directly).
        env.update({"HYPOTHESIS_PROFILE": profile, "RLN_VERIFIED_REQUIRE_NATIVE": "1",
                    "RLN_VERIFIED_CACHE": str(scratch / "native-cache"), "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1"})
        env.pop("PYTHONPATH", None)
        mutmut = [sys.executable, "-m", "mutmut"]
        t0 = time.monotonic()
        # its own process group, so that the time limit stops mutmut's workers with it
        log = scratch / "mutmut-run.log"
        with log.open("w") as f:
            proc = subprocess.Popen([*mutmut, "run", "--max-children", str(max_children), *(names or [])],
                                    cwd=scratch, env=env,
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                timed_out = True
        run_tail = log.read_text(errors="replace")[-3000:]
        wall = time.monotonic() - t0
        res = subprocess.run([*mutmut, "results", "--all", "true"], cwd=scratch, env=env, capture_output=True,
                             text=True)
        (out / f"mutmut-{mod}.txt").write_text(res.stdout + res.stderr)
        tally = count(res.stdout)
        # the diff of every survivor and timeout, kept after the scratch copy is gone
        shown = []
        for line in res.stdout.splitlines():
            name, _, state = line.strip().partition(": ")
            if "__mutmut_" in name and state in ("survived", "timeout", "suspicious"):
                diff = subprocess.run([*mutmut, "show", name], cwd=scratch, env=env, capture_output=True, text=True)
                shown.append(f"# {name}: {state}\n{diff.stdout}")
        (out / f"mutmut-{mod}-survivors.diff").write_text("\n".join(shown))
        print(f"[mutmut] {mod}: {tally} in {wall:.0f} s{' (stopped at the time limit)' if timed_out else ''}",
              flush=True)
        if not tally:
            print(run_tail)
        return {"wall_s": wall, "stopped_at_limit": timed_out, "counts": tally, "log_tail": run_tail[-1500:]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", default=list(PYTHON_MODULES), help="modules of selection.toml")
    ap.add_argument("--max-children", type=int, default=2, help="mutmut's parallel workers")
    ap.add_argument("--limit", type=float, default=3600.0, help="seconds per module before mutmut is stopped")
    ap.add_argument("--out", default=str(ROOT / "build" / "mutation"))
    ap.add_argument("--recheck", action="store_true",
                    help="rerun only the mutants that were not killed in the last full run in --out, and merge: for "
                         "test additions while the kernel source is unchanged (its digest is compared)")
    ap.add_argument("--match", default=None,
                    help="with --recheck: rerun only the not-killed mutants whose names match this regular expression "
                         "(the others keep their state from the last run)")
    ap.add_argument("--state", default=None,
                    help="with --recheck: rerun only the mutants in this state of the last run (e.g. 'not checked' to "
                         "finish a run stopped at its limit)")
    ap.add_argument("--checked-only", action="store_true",
                    help="with --recheck: leave out the mutants the last run never checked (a partial measurement; "
                         "they stay unchecked and the module cannot meet the target)")
    args = ap.parse_args(argv)
    cfg = tomllib.loads((HERE / "selection.toml").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "mutmut.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rc = 0
    for mod in args.modules:
        sel = cfg["modules"][mod]
        digest = sources_digest(sel)
        names = None
        if args.recheck:
            prev_txt = (out / f"mutmut-{mod}.txt").read_text()
            prev = summary.get(mod, {})
            if prev.get("sources_digest") != digest:
                print(f"[mutmut] {mod}: the kernel source changed since the last full run: run it in full", flush=True)
                rc = 1
                continue
            skip = ("killed", "not checked", "skipped") if args.checked_only else ("killed",)
            names = [n for n, st in states_of(prev_txt).items()
                     if st not in skip and (args.match is None or re.search(args.match, n))
                     and (args.state is None or st == args.state)]
            print(f"[mutmut] {mod}: rechecking {len(names)} mutants not killed in the last full run", flush=True)
        res = run_module(mod, sel, str(cfg.get("profile", "dev")), args.max_children, args.limit, out, names)
        res["sources_digest"] = digest
        if names is not None:
            # mutmut lists every mutant again; those not rerun keep their state from the full run
            merged = states_of(prev_txt)
            merged.update({n: st for n, st in states_of((out / f"mutmut-{mod}.txt").read_text()).items()
                           if n in names})
            (out / f"mutmut-{mod}.txt").write_text("".join(f"    {n}: {st}\n" for n, st in merged.items()))
            res["rechecked"] = len(names)
            res["full_run"] = {k: prev.get(k) for k in ("wall_s", "counts")}
        res["score"] = score(mod, (out / f"mutmut-{mod}.txt").read_text())
        print(f"[mutmut] {mod}: {res['score']['line']}", flush=True)
        rc |= 0 if res["score"]["ok"] else 1
        # re-read before writing: another module's run may have written the file meanwhile
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary[mod] = res
        summary_path.write_text(json.dumps(summary, indent=1))
    return rc


TARGET = 0.90


def states_of(results: str) -> dict[str, str]:
    states: dict[str, str] = {}
    for line in results.splitlines():
        name, _, state = line.strip().partition(": ")
        if "__mutmut_" in name:
            states[name] = state
    return states


def score(mod: str, results: str) -> dict[str, object]:
    """The target's score of one module from ``mutmut results --all true``: killed / (mutants - equivalent
    survivors). Survivors, "no tests" and timeouts that mutmut-equivalent.toml does not list are the failures."""
    path = HERE / "mutmut-equivalent" / f"{mod}.toml"
    listed: dict[str, str] = tomllib.loads(path.read_text()).get("equivalent", {}) if path.exists() else {}
    states = states_of(results)
    killed = sum(1 for st in states.values() if st == "killed")
    unchecked = sorted(n for n, st in states.items() if st in ("not checked", "skipped"))
    lost = {n: st for n, st in states.items() if st not in ("killed", "not checked", "skipped")}
    equivalent = sorted(n for n in lost if n in listed)
    failures = sorted(n for n in lost if n not in listed)
    stale = sorted(n for n in listed if states.get(n) == "killed")
    denom = len(states) - len(equivalent) - len(unchecked)
    frac = killed / denom if denom else 1.0
    ok = frac >= TARGET and not unchecked
    line = (f"{len(states)} mutants, {killed} killed, {len(equivalent)} equivalent survivors, {len(failures)} "
            f"non-equivalent survivors, {len(unchecked)} unchecked: score {100 * frac:.1f}% "
            f"({'meets' if ok else 'MISSES'} the {100 * TARGET:.0f}% target)")
    return {"mutants": len(states), "killed": killed, "equivalent": equivalent, "failures": failures,
            "failure_states": {n: lost[n] for n in failures}, "unchecked": unchecked,
            "listed_but_killed": stale, "score": frac, "ok": ok, "line": line}


if __name__ == "__main__":
    sys.exit(main())
