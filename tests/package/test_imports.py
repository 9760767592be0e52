"""The package's import graph: no new import circles, lazy (function-level) imports included.

A lazy import hides a circle from Python but not from a reader: modules in a circle cannot be read,
tested or replaced one at a time. Imports under ``if TYPE_CHECKING:`` are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llmcomp_hf"

# Circles that predate this test, to be broken (each entry: the modules of one strongly connected part).
KNOWN_CIRCLES: set[frozenset[str]] = {
    frozenset({"llmcomp_hf.cli", "llmcomp_hf.cli.commands"}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "llmcomp_hf":
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected parts with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.add(top)
                if top == node:
                    break
            if len(part) > 1:
                found.add(frozenset(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_new_import_circles():
    new = circles(import_graph()) - KNOWN_CIRCLES
    assert not new, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)


def test_the_quantizer_layer_has_no_circles():
    """The transformers integration (issue 7): quantizer, ops, registration, save hooks, hub, prefetch."""
    watched = {"llmcomp_hf.quantizer", "llmcomp_hf._ops", "llmcomp_hf._register", "llmcomp_hf._save_hooks",
               "llmcomp_hf.hub", "llmcomp_hf._prefetch", "llmcomp_hf._hf_compat"}
    for circle in circles(import_graph()):
        assert not (circle & watched), sorted(circle)


def test_stream_names_stay_where_callers_import_them():
    """stream/ was untangled (records.py and files.plain_config below the writers); the old homes still export."""
    import llmcomp_hf.stream as stream
    from llmcomp_hf.stream import compress, expand, files, records

    assert compress.TensorRecord is records.TensorRecord and compress.RunResult is records.RunResult
    assert expand.plain_config is files.plain_config
    for name in stream.__all__ + ["restore_card"]:
        assert getattr(stream, name) is not None, name
