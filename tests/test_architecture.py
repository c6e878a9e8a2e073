"""The package's import graph (docs/architecture.md): every module sits in one layer, imports run only down or
sideways, and no chain of imports, eager or lazy, comes back to where it started."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rln_verified"

# Bottom to top, as drawn in docs/architecture.md. A module may import its own layer and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("rln_verified._validation", "rln_verified._dispatch", "rln_verified._registry",
              "rln_verified._registry.*", "rln_verified.bench", "rln_verified.bench.*")),
    ("formulas", ("rln_verified._special", "rln_verified._norm_formula", "rln_verified._gaussian_formula")),
    ("kernels", ("rln_verified._native", "rln_verified._native.*")),
    ("functional", ("rln_verified._norm", "rln_verified._gaussian", "rln_verified._bayesian_std",
                    "rln_verified._bayesian_ops")),
    ("modules", ("rln_verified._norm_layers", "rln_verified._bayesian_linear", "rln_verified._bayesian_conv",
                 "rln_verified._bayesian_mlp",
                 "rln_verified._tools", "rln_verified._bayesian_train", "rln_verified._to_bayesian")),
    ("public", ("rln_verified", "rln_verified.functional", "rln_verified.claims", "rln_verified.seed")),
    ("verify", ("rln_verified.verify", "rln_verified.verify.*", "rln_verified.cli", "rln_verified.__main__")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pat) for pat in patterns):
            return i
    raise AssertionError(f"{module} is in no layer: place it in tests/test_architecture.py and docs/architecture.md")


def _imports(module: str) -> set[str]:
    """Every rln_verified module ``module`` imports, at the top or inside a function, without its own packages
    (importing a sibling runs no more of the package that is already importing it)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # import a.b.c names the module a.b.c (or its nearest package)
                name = name.rpartition(".")[0]
            if name.startswith("rln_verified") and name != module and not module.startswith(name + "."):
                out.add(name)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        _layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module: str) -> None:
    mine = _layer(module)
    up = {m: LAYERS[_layer(m)][0] for m in GRAPH[module] if _layer(m) > mine}
    assert not up, f"{module} ({LAYERS[mine][0]}) imports up the layers: {up}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_architecture_page_draws_these_layers() -> None:
    """docs/architecture.md's table lists the same layers, in the same order, with the same modules."""
    text = (PKG.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (.+?) \| .+ \|$", text, flags=re.M)
    drawn = [(layer, set(re.findall(r"`([\w/.]+)`", cell))) for layer, cell in rows if layer != "layer"]
    assert [layer for layer, _ in drawn] == [layer for layer, _ in LAYERS]
    for (layer, names), (_, patterns) in zip(drawn, LAYERS, strict=True):
        want = {p.removeprefix("rln_verified.").removesuffix(".*") for p in patterns}
        got = {n.rstrip("/").replace("/", ".") for n in names}
        got = {"rln_verified" if n == "__init__" else n for n in got if n != "rln_verified"}
        missing = {w for w in want if w not in got and w != "rln_verified"}
        assert not missing, f"layer {layer}: docs/architecture.md does not name {sorted(missing)}"


def test_the_graph_sees_imports() -> None:
    """The checks above would pass on an empty graph: pin that it reads eager, lazy and relative imports."""
    assert "rln_verified._native.rnorm" in GRAPH["rln_verified._norm"]
    assert "rln_verified._norm_formula" in GRAPH["rln_verified._native.rnorm"]
    assert "rln_verified._gaussian_formula" in GRAPH["rln_verified._native.gauss"]
    lazy = {n for n in GRAPH["rln_verified.verify.norm"] if n.startswith("rln_verified._native")}
    assert lazy, "verify.norm's function-level import of the kernel package is not seen"


@pytest.mark.parametrize(("cls", "entry"), [("BBBLinear", "bbb_linear"), ("LRLinear", "lr_linear"),
                                            ("CLTLinear", "clt_linear"), ("CLTLinearDet", "clt_linear_det")])
def test_each_bayesian_layer_forward_is_one_call_of_its_entry(cls: str, entry: str) -> None:
    """One place per concern: a Bayesian layer's ``forward`` is ``return <entry>(...)``, the entry imported from
    ``_bayesian_ops``, so MAP mode, autocast and the choice of path live there and nowhere in the layer."""
    tree = ast.parse(MODULES["rln_verified._bayesian_linear"].read_text())
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "rln_verified._bayesian_ops"
                for a in n.names}
    assert entry in imported
    (klass,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    (fwd,) = [n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == "forward"]
    body = [s for s in fwd.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call)
    func = body[0].value.func
    assert isinstance(func, ast.Name) and func.id == entry
