"""Write docs/transforms.md, the transform matrix, from the outcomes the last run of tests/test_transforms.py recorded.

    python docs/gen_transforms.py [--results DIR] [--out docs/transforms.md]

The test run appends one JSON line per cell to ``$RLN_TRANSFORMS_RESULTS`` (default ``build/transforms/``), one file
per pytest process, named by the run's id; the newest run is read. A cell of the matrix with no line (its process
crashed, or it was deselected) shows as "not run". Files of older runs are deleted once the newest is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
DEFAULT_RESULTS = Path(os.environ.get("RLN_TRANSFORMS_RESULTS", ROOT / "build" / "transforms"))
COMMAND = ".venv/bin/pytest tests/test_transforms.py -n 2; .venv/bin/python docs/gen_transforms.py"

MARK = {"right": "✓", "refused": "refused", "failed": "✗", "not run": "not run", "n/a": "n/a"}

COLUMN_NAMES = {
    "eager": "eager f32", "autocast_bf16": "autocast bf16", "autocast_fp16": "autocast fp16",
    "compile": "compile (aot_eager)", "compile_inductor": "compile (inductor)", "export": "export",
    "jit_trace_nograd": "jit.trace no_grad",
    "jit_trace_grad": "jit.trace grad", "vmap": "vmap", "jacrev": "jacrev", "hessian": "hessian",
    "forward_ad": "forward AD",
    "per_sample_grad": "per-sample grad", "gradcheck": "gradcheck", "gradgradcheck": "gradgradcheck",
    "onnx": "ONNX (ort)", "meta": "meta", "deepcopy": "deepcopy", "pickle": "pickle", "ddp": "DDP",
    "fsdp2": "FSDP2",
}


def _matrix() -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from _transform_cases import SUBJECTS
    from _transform_cells import COLUMNS, not_applicable

    na = {}
    for name, s in SUBJECTS.items():
        for col in COLUMNS:
            why = not_applicable(s, col)
            if why is not None:
                na[(name, col)] = why
    return list(SUBJECTS), list(COLUMNS), na


def load(results: Path) -> tuple[str, dict[tuple[str, str], dict[str, object]]]:
    files = sorted(results.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no results in {results}: run `{COMMAND}` first")
    run = json.loads(files[-1].read_text().splitlines()[0])["run"]
    cells: dict[tuple[str, str], dict[str, object]] = {}
    for f in files:
        if not f.name.startswith(f"{run}-"):
            f.unlink()
            continue
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            cells[(rec["subject"], rec["column"])] = rec
    return run, cells


def _count(values: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:  # type: ignore[attr-defined]
        counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("\x1b", "")


def render(results: Path) -> str:
    subjects, columns, na = _matrix()
    run, cells = load(results)
    tally = {"right": 0, "refused": 0, "failed": 0, "not run": 0}
    head = "| subject | " + " | ".join(COLUMN_NAMES.get(c, c) for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    notes: list[tuple[str, str, str, str]] = []
    for s in subjects:
        row = [f"`{s}`"]
        for c in columns:
            if (s, c) in na:
                row.append(MARK["n/a"])
                continue
            rec = cells.get((s, c))
            outcome = str(rec["outcome"]) if rec is not None else "not run"
            tally[outcome] += 1
            row.append(MARK[outcome])
            if outcome in ("refused", "failed") and rec is not None:
                notes.append((s, c, outcome, _escape(str(rec["detail"]))))
        lines.append("| " + " | ".join(row) + " |")
    seconds = sum(float(str(r["seconds"])) for r in cells.values())
    out = [
        "# Transform matrix",
        "",
        "Every public layer and functional form under every PyTorch transform. A cell is **✓** when the",
        "transform's answer matches an independent reference (float64 eager, autograd on it, or finite differences)",
        "within the tolerance derived next to it in `tests/_transform_cells.py`; **refused** when it raises the",
        "documented error of the `REFUSED` table in `tests/test_transforms.py`; **✗** when it is wrong, crashes or",
        "raises an undocumented error; n/a: the cell does not exist, for the reason listed under the table.",
        "",
        f"Reproduce: `{COMMAND}` (the same runs in `make test`).",
        "",
        f"Tally: {tally['right']} right, {tally['refused']} refused, {tally['failed']} failed"
        + (f", {tally['not run']} not run" if tally["not run"] else "")
        + f" (run `{run[:12]}`, {seconds:.0f} s of cell time).",
        "",
        "Subjects: `[64x96]` marks the size that takes the fused float32 C path of the Bayesian linear layers; the",
        "norm layers take it at every float32 size. Sampling layers run with `manual_reset` and fixed stored noise.",
        "The conv layers map (2, 3, 6, 6) to 4 channels (kernel 3, padding 1); `CLTConv2d` is an input layer",
        "(`is_input=True`, no input variance), `CLTConv2d[var_h]` a hidden one (mean and variance in).",
        "The jit.trace columns run the trace after a `torch.jit.save` / `torch.jit.load` round trip, as it is shipped.",
        "A float32 trace of a 2d layer takes its planes from the input (the fused operator: the CPU kernel built, or",
        "CUDA), so it is right at any H and W; a trace off that path (float64, or the kernel off) is specialized to",
        "the traced H and W, and raises at others. `torch.export` with dynamic H and W likewise: the fused float32",
        "operator keeps them symbolic, and other dtypes specialize them (export raises a constraint violation).",
        "",
        *lines,
        "",
    ]
    out += ["Cells marked n/a:", ""]
    out += [f"- {why}: {n} cells" for why, n in sorted(_count(na.values()).items())]
    out.append("")
    if notes:
        out += ["## Refused and failed cells", "", "| subject | transform | outcome | error |", "|---|---|---|---|"]
        out += [f"| `{s}` | {COLUMN_NAMES.get(c, c)} | {o} | {d} |" for s, c, o, d in notes]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--out", type=Path, default=DOCS / "transforms.md")
    args = ap.parse_args()
    try:
        text = render(args.results)
    except FileNotFoundError as exc:
        print(f"gen_transforms: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"{args.out}: written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
