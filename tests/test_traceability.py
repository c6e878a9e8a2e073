"""Every theorem in proofs/ is registered and checked by a test, and every cited ID exists.

Conventions (see proofs/README.md):
  * a theorem heading in proofs/<topic>.md reads ``### <ID>: <title>``;
  * its body has a line ``Checked by: `tests/<file>.py` ``;
  * a test that checks it carries ``@pytest.mark.claim("<ID>")``.

The markers are read from the items pytest collects (an in-process ``pytest --collect-only`` with a plugin that
records each item's ``claim`` markers), never from the source text: a marker in a comment or a string, or on a
function pytest does not collect, does not count.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

from rln_verified.claims import CLAIM_ID, CLAIMS

ROOT = Path(__file__).resolve().parent.parent
PROOFS = ROOT / "proofs"
TESTS = ROOT / "tests"
HEADING = re.compile(r"^#{2,4}\s+([A-Z][A-Z]*-?[0-9]+):\s", re.MULTILINE)
CHECKED_BY = re.compile(r"Checked by:\s*(.+)")


class _ClaimMarkers:
    """A pytest plugin that records, for every collected item, its file name and the IDs of its claim markers."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, tuple[str, ...]]] = []

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[pytest.Item]) -> None:
        for item in items:
            ids = tuple(str(a) for mark in item.iter_markers(name="claim") for a in mark.args)
            self.items.append((item.nodeid, Path(str(item.path)).name, ids))


def collect_claim_markers(*paths: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(node id, file name, claim IDs) of every test item pytest collects under ``paths`` (in process)."""
    plugin = _ClaimMarkers()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *map(str, paths)], plugins=[plugin])
    assert rc == pytest.ExitCode.OK, f"collecting {paths} failed (exit {rc!r})"
    return plugin.items


@functools.cache
def _suite_markers() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return tuple(collect_claim_markers(TESTS))


def proof_ids() -> dict[str, tuple[str, str]]:
    """ID -> (topic, section text)."""
    out: dict[str, tuple[str, str]] = {}
    for md in sorted(PROOFS.glob("*.md")):
        if md.name == "README.md":  # the conventions page shows an example heading
            continue
        text = md.read_text()
        heads = list(HEADING.finditer(text))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            assert m.group(1) not in out, f"{m.group(1)} is stated twice (again in {md.name})"
            out[m.group(1)] = (md.stem, text[m.start() : end])
    return out


def cited_ids() -> dict[str, set[str]]:
    """ID -> test files with a collected test item whose claim markers cite it."""
    out: dict[str, set[str]] = {}
    for _, name, ids in _suite_markers():
        for cid in ids:
            out.setdefault(cid, set()).add(name)
    return out


def test_markers_are_read_from_collected_items(tmp_path: Path) -> None:
    """A claim marker in a comment, in a string or on a function pytest does not collect cites nothing."""
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "# @pytest.mark.claim(\"PSI-2\")\n"
        "DOC = '@pytest.mark.claim(\"PSI-4\")'\n\n\n"
        "@pytest.mark.claim(\"N3\")\n"
        "def helper_not_a_test() -> None:\n    pass\n\n\n"
        "@pytest.mark.claim(\"PSI-3\")\n"
        "@pytest.mark.parametrize(\"k\", [1, 2])\n"
        "def test_real(k: int) -> None:\n    pass\n"
    )
    items = collect_claim_markers(tmp_path / "test_probe.py")
    assert sorted(ids for _, _, ids in items) == [("PSI-3",), ("PSI-3",)], items


def test_the_suite_collects_claim_markers() -> None:
    items = _suite_markers()
    assert any(ids for _, _, ids in items), "no collected test carries a claim marker"


def test_registry_matches_proofs() -> None:
    stated = proof_ids()
    registered = {c.id: c for c in CLAIMS}
    assert stated, "proofs/ states no theorem"
    missing = sorted(set(stated) - set(registered))
    extra = sorted(set(registered) - set(stated))
    assert not missing, f"theorems in proofs/ but not in the package registry: {missing}"
    assert not extra, f"registered claims with no theorem in proofs/: {extra}"
    for cid, (topic, _) in stated.items():
        got = registered[cid].topic
        assert got == topic, f"{cid}: stated in proofs/{topic}.md, registered under topic {got!r}"
        assert CLAIM_ID.match(cid)


def test_every_theorem_is_checked_by_a_test() -> None:
    cited = cited_ids()
    unchecked = sorted(cid for cid in proof_ids() if cid not in cited)
    assert not unchecked, f"theorems with no test carrying @pytest.mark.claim: {unchecked}"


def test_every_cited_id_exists() -> None:
    stated = proof_ids()
    dangling = sorted(
        f"{cid} (in {', '.join(sorted(files))})" for cid, files in cited_ids().items() if cid not in stated
    )
    assert not dangling, f"tests cite claim IDs that proofs/ does not state: {dangling}"


def test_checked_by_lines_name_citing_files() -> None:
    cited = cited_ids()
    for cid, (_, section) in proof_ids().items():
        m = CHECKED_BY.search(section)
        assert m, f"{cid}: no 'Checked by:' line in its proof section"
        files = set(re.findall(r"tests/(test_[A-Za-z0-9_]+\.py)", m.group(1)))
        assert files, f"{cid}: 'Checked by:' names no tests/test_*.py file"
        assert files <= cited.get(cid, set()), (
            f"{cid}: 'Checked by:' names {sorted(files)}, but only {sorted(cited.get(cid, set()))} cite it"
        )


def test_registered_covers_are_importable() -> None:
    import importlib

    for c in CLAIMS:
        assert c.covers, f"{c.id}: covers no function"
        for qual in c.covers:
            mod, _, attr = qual.rpartition(".")
            obj = importlib.import_module(mod)
            assert hasattr(obj, attr), f"{c.id}: covers {qual}, which does not exist"
