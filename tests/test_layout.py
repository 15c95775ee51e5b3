"""The package's shape: no import circle between its modules, a registry that imports
nothing of the package, and an ``import transreg`` that loads no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import transreg

PACKAGE = Path(transreg.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports (anywhere in the file, function bodies included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    """File → file imports (a package is its ``__init__.py``; ``from . import x`` names x)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(files)) for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    graph = {m: {d for d in deps if d != "transreg"} for m, deps in _graph().items()}
    assert _cycles(graph) == []


def test_registry_imports_nothing_of_the_package():
    graph = _graph()
    assert graph["transreg.zoo.registry"] <= {"transreg", "transreg.zoo"}  # its parent packages only
    body = ast.parse((PACKAGE / "zoo" / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr)  # a docstring only: models may import zoo.registry


def test_import_transreg_loads_no_torch():
    code = "import sys, transreg; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_layout_names_every_module_and_folder():
    """The README's "Layout" block names each subpackage, each top-level module and each
    module of models/, zoo/, registration/ and training/, and nothing that is not there."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    import re

    named = set(re.findall(r"([a-z_0-9]+(?:\.py|/))", block))
    present = {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    present |= {p.name + "/" for p in PACKAGE.glob("*/*") if p.is_dir() and (p / "__init__.py").is_file()}
    listed_files = [PACKAGE, *(PACKAGE / d for d in ("models", "zoo", "registration", "training"))]
    present |= {p.name for folder in listed_files for p in folder.glob("*.py")
                if p.name not in ("__init__.py", "__main__.py")}
    top = {"transreg/", "zoo_cards/", "train/", "evaluate/", "tests/", "results/", "fixtures/", "configs/"}
    assert present - named == set(), "modules missing from the README's Layout"
    anywhere = {p.name for p in PACKAGE.rglob("*.py")} | {p.name + "/" for p in PACKAGE.rglob("*") if p.is_dir()}
    assert named - anywhere - top == set(), "the README's Layout names what is not in the package"
