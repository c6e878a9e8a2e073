"""Assemble the mkdocs sources into docs/build/src.

    python docs/gen_site.py [--out DIR]

Copies docs/*.md and docs/*.png, renders each proofs/<topic>.md as proofs/<topic>.md (proofs/README.md
becomes proofs/index.md; links rewritten, a note naming the source), and writes a stub for a page that
another step generates (audit.md, verification-report.md) when it has not been generated yet.

Display math (a ``$$ ... $$`` block, as GitHub renders it) becomes MathML here, with latex2mathml, so the
site shows rendered math with no script and no network.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from latex2mathml.converter import convert

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
DEFAULT_OUT = DOCS / "build" / "src"

# Pages made by a command rather than written by hand.
GENERATED = {
    "audit.md": "python docs/gen_audit.py",
    "verification-report.md": "rln-verify --profile ci --markdown docs/verification-report.md",
    "transforms.md": ".venv/bin/pytest tests/test_transforms.py -n 2; .venv/bin/python docs/gen_transforms.py",
}

# Plots made by the scripts in docs/ from real runs, shown under the proofs they illustrate.
FIGURES = {
    "special.md": [("psi.png", "plot_psi.py", "psi and psi' with the PSI-2 and PSI-4 bounds, and the float32 "
                    "relative error of psi against mpmath next to the textbook form (PSI-3).")],
    "gaussian.md": [("relu_moments.png", "plot_relu_moments.py", "Relative error of relu_moments against "
                     "mpmath across a = mu/sigma in float64 and float32, next to the textbook closed form "
                     "(RELU-4).")],
    "norm.md": [("n3.png", "plot_n3.py", "The N3 adversarial search on the four layers: the gradient ratio of "
                 "every example Hypothesis tried (dots) and the best so far (line), against the proven K.")],
}

_FENCE = re.compile(r"^(```.*?^```)", re.S | re.M)
_DISPLAY = re.compile(r"^\$\$\n(.+?)\n\$\$$", re.S | re.M)


class MathError(ValueError):
    """A display formula latex2mathml cannot read."""


def _mathml(m: re.Match[str]) -> str:
    tex = m.group(1)
    bad = sorted({f"{ord(c):#04x}" for c in tex if ord(c) < 32 and c != "\n"})
    if bad:  # e.g. "\f" or "\r" typed where "\\frac" or "\\right" was meant
        raise MathError(f"control character(s) {', '.join(bad)} in {tex[:60]!r}")
    try:
        return f'<div class="math">{convert(tex, display="block")}</div>'
    except Exception as exc:
        raise MathError(f"{type(exc).__name__} in {tex[:60]!r}") from None


def render_math(text: str) -> str:
    """Replace each ``$$`` block outside code fences by a MathML block; MathError on a bad formula."""
    parts = _FENCE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside fences
        parts[i] = _DISPLAY.sub(_mathml, parts[i])
    return "".join(parts)


def _render(path: Path, text: str) -> str:
    try:
        return render_math(text)
    except MathError as exc:
        raise MathError(f"{path.relative_to(ROOT)}: display math: {exc}") from None


def _rewrite_links(text: str, in_proofs: bool) -> str:
    """Links between docs/ and proofs/ as they are in the repository become links inside the site."""
    if in_proofs:
        text = re.sub(r"\]\(\.\./docs/([^)]+)\)", r"](../\1)", text)
        # Links to sympy scripts and tests point at files outside the site: show them as code.
        return re.sub(r"\[([^\]]+)\]\((?!https?:)([^)]+\.py[^)]*)\)", r"`\2`", text)
    return re.sub(r"\]\(\.\./proofs/([^)]+)\)", r"](proofs/\1)", text)


def build(out: Path) -> tuple[int, int]:
    """Write the site's sources to ``out``; return (pages, proof topics)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "proofs").mkdir(parents=True)
    for f in DOCS.glob("*.png"):
        shutil.copy2(f, out / f.name)
    for f in DOCS.glob("*.md"):
        (out / f.name).write_text(_render(f, _rewrite_links(f.read_text(), in_proofs=False)))
    topics = 0
    for f in sorted((ROOT / "proofs").glob("*.md")):
        name = "index.md" if f.name == "README.md" else f.name
        body = _render(f, _rewrite_links(f.read_text(), in_proofs=True))
        figures = FIGURES.get(f.name, [])
        if figures:
            body = body.rstrip() + "\n\n## Figures\n"
            for png, script, caption in figures:
                body += f"\n![{png}](../{png})\n\n{caption} Made by `python docs/{script}`.\n"
        note = f"<!-- generated from proofs/{f.name} by docs/gen_site.py; edit the source -->\n\n"
        (out / "proofs" / name).write_text(note + body)
        topics += name != "index.md"
    for name, how in GENERATED.items():
        if not (out / name).exists():
            title = name.removesuffix(".md").replace("-", " ").capitalize()
            (out / name).write_text(f"# {title}\n\nNot generated yet: run `{how}`.\n")
    return len(list(out.glob("*.md"))), topics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default docs/build/src)")
    args = ap.parse_args()
    try:
        pages, topics = build(args.out)
    except MathError as exc:
        print(f"gen_site: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {pages} pages, {topics} proof topics", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
