"""Carry mutmut results across a change that moves or renames kernel code without changing it.

    .venv/bin/python tests/mutation/carry_over.py norm --rev 34aa60d --old-results OLD.txt \\
        --old-sources rln_verified/_norm_formula.py rln_verified/_rnorm.py --rename _check_config=check_config
    .venv/bin/python tests/mutation/run_mutmut.py norm --recheck --state "not checked"

mutmut names a mutant by module, function and index, so moving a function to another module, or renaming it, gives
its mutants new names although they are the same mutations. This script generates, with mutmut's own mutator, every
mutant of the module's sources in the working tree and every mutant of ``--old-sources`` at ``--rev``, and compares
them by the text of the mutated function (its own name and docstring left out; ``--rename OLD=NEW`` maps
identifiers renamed by the change). A new mutant whose mutated function is the same text as an old one takes the old
one's state from ``--old-results`` (``mutmut results --all true`` of the run at ``--rev``); every other mutant is
"not checked". It
writes ``build/mutation/mutmut-<module>.txt`` and the module's entry of ``build/mutation/mutmut.json`` as a full run
would, so that ``run_mutmut.py --recheck --state "not checked"`` then runs exactly the new and changed mutants.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from run_mutmut import count, score, sources_digest, states_of
from run_scripted import ROOT

HERE = Path(__file__).resolve().parent


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def mutant_texts(path: str, code: str, renames: dict[str, str]) -> dict[str, str]:
    """Full mutant name -> the mutated function's text, its own name replaced, ``renames`` applied."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    with tempfile.TemporaryDirectory() as tmp:  # mutmut reads its configuration from the working folder
        Path(tmp, "pyproject.toml").write_text('[tool.mutmut]\nsource_paths = ["src/"]\n')
        Path(tmp, "src").mkdir()
        cwd = Path.cwd()
        os.chdir(tmp)
        try:
            mutated = mutate_file_contents(path, code)
        finally:
            os.chdir(cwd)
    wanted = set(mutated.mutant_names)
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(mutated.code)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in wanted:
            name = node.name
            node.name = "F"
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str) and len(body) > 1:
                node.body = body[1:]  # the docstring: mutmut leaves it alone, and it changes no behaviour
            text = ast.unparse(node)
            for old, new in renames.items():
                text = re.sub(rf"(?<![\w.]){re.escape(old)}\b", new, text)
            out[f"{_module_name(path)}.{name}"] = text
    missing = wanted - {n.rpartition(".")[2] for n in out}
    if missing:
        raise RuntimeError(f"{path}: mutants not found in mutmut's output: {sorted(missing)[:5]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module", help="a module of selection.toml")
    ap.add_argument("--rev", required=True, help="the commit the old results were measured on")
    ap.add_argument("--old-results", required=True, type=Path, help="mutmut results --all true of that run")
    ap.add_argument("--old-sources", nargs="+", help="the module's sources at --rev (default: its sources now)")
    ap.add_argument("--rename", nargs="*", default=[], help="OLD=NEW identifiers the change renamed")
    ap.add_argument("--out", default=str(ROOT / "build" / "mutation"))
    args = ap.parse_args(argv)
    sel = tomllib.loads((HERE / "selection.toml").read_text())["modules"][args.module]
    renames = dict(r.split("=", 1) for r in args.rename)
    new: dict[str, str] = {}
    for src in sel["sources"]:
        if src.endswith(".py"):
            new.update(mutant_texts(src, (ROOT / src).read_text(), {}))
    old_states = states_of(args.old_results.read_text())
    by_text: dict[str, str] = {}
    for src in args.old_sources or [s for s in sel["sources"] if s.endswith(".py")]:
        code = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.rev}:{src}"], capture_output=True, text=True,
                              check=True).stdout
        for name, text in mutant_texts(src, code, renames).items():
            if name in old_states:
                by_text.setdefault(text, old_states[name])
    merged = {name: by_text.get(text, "not checked") for name, text in new.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = "".join(f"    {n}: {st}\n" for n, st in merged.items())
    (out / f"mutmut-{args.module}.txt").write_text(results)
    carried = sum(st != "not checked" for st in merged.values())
    summary_path = out / "mutmut.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary[args.module] = {"module": args.module, "sources": list(sel["sources"]), "counts": count(results),
                            "sources_digest": sources_digest(sel), "carried_from": args.rev, "carried": carried,
                            "score": score(args.module, results)}
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"[carry] {args.module}: {carried} of {len(merged)} mutants carried from {args.rev}, "
          f"{len(merged) - carried} to run", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
