"""The scripted mutants: each patch in ``tests/mutation/patches`` applied alone to a scratch copy of the
working tree, then the fast test selection of its module (``tests/mutation/selection.toml``).

    .venv/bin/python tests/mutation/run_scripted.py                 # every mutant (make mutation)
    .venv/bin/python tests/mutation/run_scripted.py --only i17-      # the mutants whose name starts with i17-
    .venv/bin/python tests/mutation/run_scripted.py --list           # the mutants and their modules

The scratch copy: the files git tracks plus the untracked files it does not ignore, copied from the working tree
into a temporary folder (so other engineers' unfinished tests are part of the measurement, and the checkout itself
is never written). The patches are written against HEAD's kernel sources; a kernel source that differs from HEAD in
the working tree is reported, and a patch that no longer applies is an error, not a result.

Outcomes: ``killed`` (the selection failed, a C kernel that does not build included: the runs set
RLN_VERIFIED_REQUIRE_NATIVE=1), ``survived`` (it passed), ``timeout`` (it ran past its limit twice: a survivor; a
first timeout is rerun with twice the limit, and a failing rerun counts as killed). Score per module: killed /
(total - equivalent), where equivalent survivors are the ones listed with a reason in ``equivalent.toml``.
Results go to ``build/mutation/scripted.json`` and ``build/mutation/scripted.md``; the exit status is 1 when a
module misses the target (90%) or a listed mutant could not be run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PATCHES = HERE / "patches"
TARGET = 0.90


@dataclass
class Mutant:
    name: str
    module: str
    issue17: str
    description: str
    files: list[str]
    path: Path


@dataclass
class Result:
    name: str
    module: str
    issue17: str
    description: str
    outcome: str  # killed, survived, timeout, error
    seconds: float
    detail: str = ""
    equivalent: str = ""  # the reason from equivalent.toml, for a listed survivor
    runs: list[str] = field(default_factory=list)


def read_patch(path: Path) -> Mutant:
    head: dict[str, str] = {}
    files: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("+++ b/"):
            files.append(line[len("+++ b/"):].split("\t")[0])
        elif ":" in line and not line.startswith(("---", "+++", "@@", " ", "+", "-")) and not files:
            key, _, value = line.partition(":")
            head[key.strip()] = value.strip()
    if "Module" not in head or not files:
        raise ValueError(f"{path}: a patch needs a 'Module:' header line and a unified diff")
    return Mutant(head.get("Mutant", path.stem), head["Module"], head.get("Issue17", ""),
                  head.get("Description", ""), files, path)


def load_mutants(only: list[str]) -> list[Mutant]:
    found = [read_patch(p) for p in sorted(PATCHES.glob("*.patch"))]
    if only:
        found = [m for m in found if any(m.name.startswith(o) or m.module == o for o in only)]
    return found


def snapshot(dest: Path) -> list[str]:
    """Copy the working tree's tracked and not-ignored untracked files into ``dest``; return the kernel sources that
    differ from HEAD (the patches are written against HEAD)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if rel.startswith("tests/mutation/patches/") or not src.is_file():
            continue  # a tracked file deleted in the working tree, or the patches themselves
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    kernels = ["rln_verified/_special.py", "rln_verified/_gaussian_formula.py", "rln_verified/_gaussian.py",
               "rln_verified/_norm_formula.py",
               "rln_verified/_norm.py", "rln_verified/_bayesian_std.py", "rln_verified/_bayesian_ops.py",
               "rln_verified/_bayesian_linear.py", "rln_verified/_bayesian_mlp.py", "rln_verified/_bayesian_train.py",
               "rln_verified/_native/rnorm.c",
               "rln_verified/_native/gauss.c"]
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "--name-only", "HEAD", "--", *kernels],
                          capture_output=True, text=True, check=True).stdout.split()
    return diff


def pytest_cmd(sel: dict[str, object]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:randomly", "-p", "no:cacheprovider",
           f"--hypothesis-seed={sel.get('seed', 0)}", "-o", "addopts=--strict-markers", "-rfE"]
    k = str(sel.get("k", ""))
    if k:
        cmd += ["-k", k]
    return cmd + [str(t) for t in sel["tests"]]  # type: ignore[union-attr]


def run_once(work: Path, cmd: list[str], env: dict[str, str], limit: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, last lines)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    dt = time.monotonic() - t0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]  # the -ra summary names the test
    tail = "\n".join(failed[:2] or lines[-6:])
    if proc.returncode == 0:
        return "passed", dt, tail
    if proc.returncode in (1, 2, 3):  # tests failed, collection/import error, internal error: the mutant shows
        return "failed", dt, tail
    return "error", dt, f"pytest exit {proc.returncode}: {tail}"


def apply(work: Path, m: Mutant) -> str:
    proc = subprocess.run(["patch", "-p1", "-s", "--no-backup-if-mismatch", "-d", str(work), "-i", str(m.path)],
                          capture_output=True, text=True)
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def restore(work: Path, base: Path, m: Mutant) -> None:
    for rel in m.files:
        shutil.copy2(base / rel, work / rel)
        for junk in (work / rel).with_suffix(".rej"), (work / rel).with_suffix((work / rel).suffix + ".rej"):
            junk.unlink(missing_ok=True)


def scores(results: list[Result]) -> dict[str, dict[str, object]]:
    table: dict[str, dict[str, object]] = {}
    for r in results:
        row = table.setdefault(r.module, {"total": 0, "killed": 0, "equivalent": 0, "survived": [], "errors": 0})
        if r.outcome == "error":
            row["errors"] = int(row["errors"]) + 1  # type: ignore[call-overload]
            continue
        row["total"] = int(row["total"]) + 1  # type: ignore[call-overload]
        if r.outcome == "killed":
            row["killed"] = int(row["killed"]) + 1  # type: ignore[call-overload]
        elif r.equivalent:
            row["equivalent"] = int(row["equivalent"]) + 1  # type: ignore[call-overload]
        else:
            row["survived"].append(r.name)  # type: ignore[union-attr]
    for row in table.values():
        live = int(row["total"]) - int(row["equivalent"])  # type: ignore[call-overload]
        row["score"] = (int(row["killed"]) / live) if live else 1.0  # type: ignore[call-overload]
    return table


def report(results: list[Result], table: dict[str, dict[str, object]], wall: float, notes: list[str]) -> str:
    lines = ["# Scripted mutants (tests/mutation/run_scripted.py)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {wall:.0f} s.", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| module | mutants | killed | equivalent | score (killed / non-equivalent) "
              "| non-equivalent survivors |", "| --- | --- | --- | --- | --- | --- |"]
    for mod, row in sorted(table.items()):
        surv = ", ".join(row["survived"]) or "none"  # type: ignore[arg-type]
        lines.append(f"| {mod} | {row['total']} | {row['killed']} | {row['equivalent']} | "
                     f"{100 * float(row['score']):.0f}% | {surv} |")  # type: ignore[arg-type]
    lines += ["", "| mutant | module | listed survivor | outcome | s | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        note = f"equivalent: {r.equivalent}" if r.equivalent else r.detail.replace("\n", " ")[:160]
        note = note.replace("|", "/")
        lines.append(f"| {r.name} | {r.module} | {r.issue17} | {r.outcome} | {r.seconds:.0f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], help="mutant name prefixes or module names")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", default=str(ROOT / "build" / "mutation"), help="folder for scripted.json/.md")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)

    mutants = load_mutants(args.only)
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.module:14s} {m.issue17:8s} {m.description}")
        return 0
    cfg = tomllib.loads((HERE / "selection.toml").read_text())
    equivalent = tomllib.loads((HERE / "equivalent.toml").read_text()).get("equivalent", {})
    t_start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "scripted.partial.jsonl"
    partial.unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="rln-mutation-"))
    base, work = scratch / "base", scratch / "work"
    notes: list[str] = []
    results: list[Result] = []
    try:
        changed = snapshot(base)
        if changed:
            notes.append(f"kernel sources that differ from HEAD in the working tree: {', '.join(changed)}")
        shutil.copytree(base, work)
        env = dict(os.environ)
        env.update({"PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1", "RLN_VERIFIED_REQUIRE_NATIVE": "1",
                    "RLN_VERIFIED_CACHE": str(scratch / "native-cache"),
                    "HYPOTHESIS_PROFILE": str(cfg.get("profile", "dev"))})
        env.pop("RLN_VERIFIED_NATIVE", None)
        env.pop("RLN_VERIFIED_SANITIZE", None)
        check = subprocess.run([sys.executable, "-c", "import rln_verified; print(rln_verified.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
        if not check.startswith(str(work)):
            raise SystemExit(f"the scratch copy is not the package that imports (got {check}): refusing to run")
        modules = cfg["modules"]
        limits: dict[str, float] = {}
        for mod in sorted({m.module for m in mutants}):
            sel = modules[mod]
            state, dt, tail = run_once(work, pytest_cmd(sel), env, float(sel.get("baseline_limit", 300)))
            print(f"[baseline] {mod}: {state} in {dt:.1f} s", flush=True)
            if state != "passed":
                raise SystemExit(f"the unmutated tree fails the {mod} selection ({state}):\n{tail}")
            limits[mod] = max(30.0, 3.0 * dt + 10.0)
            notes.append(f"baseline {mod}: passes in {dt:.1f} s; mutant limit {limits[mod]:.0f} s")
        for m in mutants:
            sel = modules[m.module]
            err = apply(work, m)
            t0 = time.monotonic()
            if err:
                res = Result(m.name, m.module, m.issue17, m.description, "error", 0.0, f"patch does not apply: {err}")
            else:
                state, dt, tail = run_once(work, pytest_cmd(sel), env, limits[m.module])
                runs = [state]
                if state == "timeout":  # rerun once with twice the limit: a failing rerun is a kill
                    state, dt, tail = run_once(work, pytest_cmd(sel), env, 2 * limits[m.module])
                    runs.append(state)
                outcome = {"failed": "killed", "passed": "survived", "timeout": "timeout", "error": "error"}[state]
                res = Result(m.name, m.module, m.issue17, m.description, outcome, time.monotonic() - t0, tail,
                             runs=runs)
                if outcome in ("survived", "timeout") and m.name in equivalent:
                    res.equivalent = str(equivalent[m.name])
            restore(work, base, m)
            results.append(res)
            with partial.open("a") as f:  # one line per mutant as it finishes: an interrupted run keeps its results
                f.write(json.dumps(asdict(res)) + "\n")
            print(f"[{res.outcome:8s}] {m.name} ({m.module}) {res.seconds:.1f} s"
                  + (f"  equivalent: {res.equivalent}" if res.equivalent else ""), flush=True)
    finally:
        if args.keep:
            print(f"scratch kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - t_start
    table = scores(results)
    (out / "scripted.json").write_text(json.dumps(
        {"wall_s": wall, "notes": notes, "scores": table, "results": [asdict(r) for r in results]},
        indent=1, default=str))
    md = report(results, table, wall, notes)
    (out / "scripted.md").write_text(md)
    print(md)
    fail = [mod for mod, row in table.items() if float(row["score"]) < TARGET]  # type: ignore[arg-type]
    errors = [r.name for r in results if r.outcome == "error"]
    if fail:
        print(f"below the {TARGET:.0%} target: {', '.join(sorted(fail))}")
    if errors:
        print(f"could not run: {', '.join(errors)}")
    return 1 if fail or errors else 0


if __name__ == "__main__":
    sys.exit(main())
