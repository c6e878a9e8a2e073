"""The docs site: the quick start runs as written, and the assembled sources match the nav.

The strict mkdocs build itself runs in ``make docs`` (part of ``make test``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_quickstart_runs_as_written() -> None:
    blocks = _python_blocks(DOCS / "quickstart.md")
    assert blocks, "docs/quickstart.md has no python block"
    namespace: dict[str, Any] = {"__name__": "quickstart"}
    exec(compile("\n".join(blocks), str(DOCS / "quickstart.md"), "exec"), namespace)
    assert namespace["logits"].shape == (4, 10)
    assert len(namespace["uncertainty"]) == 2


def _gen_site() -> ModuleType:
    pytest.importorskip("latex2mathml")
    spec = importlib.util.spec_from_file_location("gen_site", DOCS / "gen_site.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nav_pages() -> list[str]:
    text = (DOCS / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s+(\S+\.md)\s*$", nav, flags=re.M)


def test_site_sources_cover_the_nav_and_render_math(tmp_path: Path) -> None:
    gen = _gen_site()
    gen.build(tmp_path)
    pages = _nav_pages()
    assert {"index.md", "quickstart.md", "layers.md", "bayesian-linear.md", "claims.md", "cli.md",
            "performance.md", "audit.md", "verification-report.md"} <= set(pages)
    topics = sorted(p.name for p in (DOCS.parent / "proofs").glob("*.md") if p.name != "README.md")
    assert {f"proofs/{t}" for t in topics} <= set(pages), "every proofs/ topic has a page in the nav"
    for page in pages:
        text = (tmp_path / page).read_text()
        assert "$$" not in text, f"{page}: display math left unrendered"
        for img in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
            assert (tmp_path / page).parent.joinpath(img).resolve().is_file(), f"{page}: missing image {img}"
    figures = "".join((tmp_path / "proofs" / t).read_text() for t in topics)
    for png in ("psi.png", "n3.png", "relu_moments.png"):
        assert f"](../{png})" in figures and (DOCS / png).stat().st_size < 200_000


def test_display_math_becomes_mathml() -> None:
    gen = _gen_site()
    out = gen.render_math("before\n\n$$\n\\frac{a}{b}\n$$\n\n```\n$$\nkept\n$$\n```\n")
    assert '<div class="math"><math' in out and "<mfrac>" in out
    assert "```\n$$\nkept\n$$\n```" in out  # code fences are left alone
