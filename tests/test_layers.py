"""Floors that follow the data: every import inside ``crystext/`` goes down or sideways, never up,
and no group of modules imports itself round in a circle.

The layer map below is the data the test checks against (the picture in the design notes, bottom-up:
shared ground, the crystal side, tokens, corpora and models, training, embeddings and generation,
fine-tuning, heads and the benchmark, the hub, the command line). Imports are read with ``ast``,
module-level and function-level alike (a lazy import is still a dependency); ``TYPE_CHECKING``-only
imports count too. A new module must be placed on a floor here: the test names the ones that are not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "crystext"

#: floor -> modules (a package name covers every module under it)
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "settings", "resources", "limits", "precision", "lineage", "batching", "atomic", "version",
        "decoding", "resolve", "quiet", "upload"),
    1: ("text", "reading", "local", "inputs", "spacegroups", "wyckoff_data", "composition", "descriptors", "builtin",
        "tasks"),
    2: ("tokenization", "encoding"),
    3: ("modeling", "pretrain_config", "corpus"),
    4: ("training", "auxiliary"),
    5: ("embeddings", "pipeline", "generation", "constrained"),
    6: ("finetune", "finetune_config"),
    7: ("benchmark", "heads", "plots"),
    8: ("hub",),
    9: ("cli", "__main__", ""),  # "": the package facade, crystext/__init__.py
}


def module_name(path: Path) -> str:
    """Dotted name, relative to the package, of a file under ``crystext/`` ("" for the facade)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package: relative dotted name -> file."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(name: str) -> int | None:
    """The floor of a module: the entry of :data:`LAYERS` naming it or the package holding it."""
    best: tuple[int, int] | None = None  # (length of the matching entry, floor)
    for level, entries in LAYERS.items():
        for entry in entries:
            if name == entry or (entry and name.startswith(entry + ".")):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), level)
    return None if best is None else best[1]


def _target(name: str, known: dict[str, Path]) -> str:
    """The module an import names: the longest known prefix of ``name`` (a name imported *from* a
    module is that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported crystext module, line) for every import statement of one module."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "crystext" or alias.name.startswith("crystext."):
                    yield _target(alias.name.removeprefix("crystext").lstrip("."), known), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "crystext" or (node.module or "").startswith("crystext."):
                module = node.module.removeprefix("crystext").lstrip(".")
            else:
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                yield (full if full in known else _target(module, known)), node.lineno


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, self-imports left out."""
    known = modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        out = edges.setdefault(name, {})
        for target, line in imports_of(name, path, known):
            if target != name:
                out.setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def _label(name: str) -> str:
    return f"crystext.{name}" if name else "crystext"


def test_every_module_has_a_floor():
    missing = sorted(_label(m) for m in modules() if floor(m) is None)
    assert not missing, f"place these modules on a floor in tests/test_layers.py LAYERS: {missing}"


def test_no_import_goes_up_a_floor():
    edges = graph()
    upward = [f"{_label(src)} (floor {floor(src)}) imports {_label(dst)} (floor {floor(dst)}) at line {line}"
              for src, targets in sorted(edges.items()) for dst, line in sorted(targets.items())
              if floor(src) is not None and floor(dst) is not None and floor(dst) > floor(src)]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_no_circle_of_imports():
    found = cycles(graph())
    assert not found, "circles of imports:\n" + "\n".join(" <-> ".join(map(_label, g)) for g in found)


def test_the_walk_sees_lazy_and_relative_imports():
    """The checker itself: function-level, relative and absolute imports are all edges."""
    edges = graph()
    assert "settings" in edges["embeddings"]  # a function-level ``from .settings import cache_dir``
    assert "errors" in edges["descriptors.params"]  # ``from ..errors import ...``
    assert floor("benchmark.leakage") == 7 and floor("") == 9 and floor("corpus.identity") == 3
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
