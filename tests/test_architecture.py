"""The house: every module's imports (read with ``ast``) respect the layers of docs/architecture.md."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

from tests.conftest import PROJECT_ROOT

PACKAGES = ("components", "flows")
#: Modules that may import mlflow: the tracking module and the registry/serving code.
MLFLOW_ALLOWED = ("components.tracking", "components.register", "components.serve")


def module_name(path: Path) -> str:
    """``components/dedup/pipeline.py`` -> ``components.dedup.pipeline`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    """Every module of the project's packages, parsed (not the packages' own docstring-only roots)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            name = module_name(path)
            if path.name != "__main__.py" and name not in PACKAGES:
                found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def imported(tree: ast.Module) -> Iterator[tuple[str, ast.stmt]]:
    """Every module an import statement of ``tree`` names (lazy imports in functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node
            for alias in node.names:  # ``from components import tracking`` imports a module
                yield f"{node.module}.{alias.name}", node


def project_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The project modules ``name`` imports explicitly (not its own package's ``__init__``)."""
    targets = {target for target, _ in imported(tree) if target in known}
    return {target for target in targets if target != name and not name.startswith(f"{target}.")}


def layer_table() -> list[tuple[int, tuple[str, ...]]]:
    """``(layer, prefixes)`` rows of the layer table in docs/architecture.md."""
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \w+ \| (.+) \|$", text, flags=re.MULTILINE)
    assert rows, "docs/architecture.md has no layer table"
    return [(int(layer), tuple(re.findall(r"`([\w.]+)`", prefixes))) for layer, prefixes in rows]


def layer_of(name: str, table: list[tuple[int, tuple[str, ...]]]) -> int | None:
    """The layer of the longest prefix that matches ``name``."""
    best: tuple[int, int] | None = None
    for layer, prefixes in table:
        for prefix in prefixes:
            if (name == prefix or name.startswith(f"{prefix}.")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return None if best is None else best[1]


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() -> None:
    table, parsed = layer_table(), modules()
    unassigned = sorted(name for name in parsed if layer_of(name, table) is None)
    assert not unassigned, f"give these modules a layer in docs/architecture.md: {unassigned}"
    upward = []
    for name, tree in parsed.items():
        for target in project_imports(name, tree, set(parsed)):
            if layer_of(target, table) > layer_of(name, table):
                upward.append(f"{name} (layer {layer_of(name, table)}) imports {target}")
    assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(sorted(upward))


def test_no_import_cycle() -> None:
    parsed = modules()
    graph = nx.DiGraph()
    for name, tree in parsed.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in project_imports(name, tree, set(parsed)))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles}"


def test_the_import_checks_see_lazy_imports_and_cycles() -> None:
    """The checks above would catch what they claim (a cycle made by a lazy import, an upward import)."""
    one = ast.parse("def f():\n    from components.b import x\n")
    two = ast.parse("import components.a\n")
    known = {"components.a", "components.b"}
    assert project_imports("components.a", one, known) == {"components.b"}
    assert project_imports("components.b", two, known) == {"components.a"}
    table = [(1, ("components.a",)), (3, ("components.b",))]
    assert layer_of("components.a", table) < layer_of("components.b", table)
    assert layer_of("components.b.c", table) == 3 and layer_of("other", table) is None


def test_mlflow_is_imported_only_by_tracking_and_the_registry() -> None:
    offenders = sorted(
        name
        for name, tree in modules().items()
        if any(target.split(".")[0] == "mlflow" for target, _ in imported(tree))
        and not any(name == allowed or name.startswith(f"{allowed}.") for allowed in MLFLOW_ALLOWED)
    )
    assert not offenders, f"mlflow imported outside {MLFLOW_ALLOWED}: {offenders}"


def test_no_type_checking_block_imports_project_modules() -> None:
    """Such a block would hide an import cycle; the ones left import slow third-party modules only."""
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                block = ast.Module(body=node.body, type_ignores=[])
                found += [f"{name}: {target}" for target, _ in imported(block) if target.startswith(PACKAGES)]
    assert not found, f"TYPE_CHECKING imports of project modules: {found}"
