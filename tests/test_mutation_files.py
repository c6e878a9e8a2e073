"""The mutation tooling's data files (tests/mutation/README.md) are well formed, so that ``make mutation`` reads them:
the lists of equivalent survivors parse, name mutants of the module they belong to, and give a reason of a stated
kind; every test a selection names exists."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MUT = ROOT / "tests" / "mutation"
SELECTION = tomllib.loads((MUT / "selection.toml").read_text())["modules"]
KINDS = ("exact", "within claims", "CUDA only")


def _module_prefixes(sources: list[str]) -> tuple[str, ...]:
    return tuple(s.removesuffix(".py").replace("/", ".") + "." for s in sources if s.endswith(".py"))


@pytest.mark.parametrize("path", sorted((MUT / "mutmut-equivalent").glob("*.toml")), ids=lambda p: p.stem)
def test_mutmut_equivalents_parse_and_name_their_module(path: Path) -> None:
    listed = tomllib.loads(path.read_text())["equivalent"]
    prefixes = _module_prefixes(SELECTION[path.stem]["sources"])
    assert listed
    for name, reason in listed.items():
        assert name.startswith(prefixes) and re.search(r"__mutmut_\d+$", name), name
        assert reason.startswith(KINDS) and len(reason) > 20, (name, reason)


def test_scripted_equivalents_parse_and_name_a_patch() -> None:
    listed = tomllib.loads((MUT / "equivalent.toml").read_text())["equivalent"]
    patches = {p.stem for p in (MUT / "patches").glob("*.patch")}
    for name, reason in listed.items():
        assert name in patches, name
        assert reason.startswith(KINDS) and len(reason) > 20, (name, reason)


@pytest.mark.parametrize("module", sorted(SELECTION))
def test_selection_names_existing_sources_and_tests(module: str) -> None:
    sel = SELECTION[module]
    for src in sel["sources"]:
        assert (ROOT / src).is_file(), src
    for test in sel["tests"]:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        if name:
            func = name.partition("[")[0]
            assert re.search(rf"^def {re.escape(func)}\(", (ROOT / path).read_text(), re.M), test
