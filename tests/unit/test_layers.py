"""The architecture, checked: imports only run down the layers, and every module stays small.

Layers, top to bottom: the command line (`xai_graph.cli`); the explanation side (`xai_graph.explaining`);
the insertion side's entry points (`head`, `report`, `bench`); the methods (`xai_graph.methods`); the graph
core (`xai_graph.graph`); and the leaves every layer may use (errors, formats, files, runtime, version).
The graph core knows nothing of methods, runtimes and rendering know nothing of graph editing, and
nothing imports the package root (which only re-exports) or the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "xai_graph"
MAX_LINES = 400

# module prefix -> prefixes it must never import
FORBIDDEN = {
    "xai_graph.graph": [
        "xai_graph.methods",
        "xai_graph.explaining",
        "xai_graph.cli",
        "xai_graph.head",
        "xai_graph.report",
        "xai_graph.bench",
    ],
    "xai_graph.methods": [
        "xai_graph.explaining",
        "xai_graph.cli",
        "xai_graph.head",
        "xai_graph.report",
        "xai_graph.bench",
    ],
    "xai_graph.runtime": ["xai_graph.graph", "xai_graph.methods", "xai_graph.explaining", "xai_graph.head"],
    "xai_graph.explaining.render": ["xai_graph.graph", "xai_graph.methods", "xai_graph.head"],
    "xai_graph.files": ["xai_graph.graph", "xai_graph.methods", "xai_graph.explaining", "xai_graph.head"],
    "xai_graph.formats": ["xai_graph.graph", "xai_graph.methods", "xai_graph.explaining", "xai_graph.head"],
    "xai_graph.errors": ["xai_graph."],
    "xai_graph": ["xai_graph.cli"],
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "xai_graph":  # `from xai_graph import metrics` reads the root: name it as such
                names.add("xai_graph")
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


@pytest.mark.parametrize("module, path", modules(), ids=[m for m, _ in modules()])
def test_imports_run_down_the_layers(module, path):
    if module in ("xai_graph", "xai_graph.__main__"):
        return  # the package root re-exports lazily, by name; `python -m xai_graph` is the command line itself
    rules = [banned for prefix, banned_list in FORBIDDEN.items() if _under(module, prefix) for banned in banned_list]
    wrong = sorted(name for name in imported(path) for banned in rules if _under(name, banned))
    assert not wrong, f"{module} imports {wrong}"
    assert "xai_graph" not in imported(path), f"{module} imports the package root; import the module it needs"


@pytest.mark.parametrize(
    "path", [p for _, p in modules()] + sorted((ROOT / "cli").glob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_stay_under_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


MAX_COMPLEXITY = 20  # radon's cyclomatic complexity (it counts boolean operators, unlike ruff's McCabe check)


def _functions(blocks):
    for block in blocks:
        yield from _functions(getattr(block, "methods", []))  # a class: its methods
        if not hasattr(block, "methods"):
            yield block
            yield from _functions(block.closures)


@pytest.mark.parametrize(
    "path", [p for _, p in modules()] + sorted((ROOT / "cli").glob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_function_is_over_complexity_20(path):
    from radon.complexity import cc_visit

    complex_ones = [
        f"{f.name} ({f.complexity})" for f in _functions(cc_visit(path.read_text())) if f.complexity > MAX_COMPLEXITY
    ]
    assert not complex_ones, f"split these: {complex_ones}"
