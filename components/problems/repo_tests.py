"""Problems mined from test files: a function that a test file imports and asserts on becomes a problem
(the prompt, canonical body and entry point as for doctests; the tests are the test file's assertions
on it).

A test file is ``test_*.py`` or ``*_test.py``. Its test functions (module-level ``test*`` functions and
``test*`` methods of ``Test*`` / ``*TestCase`` classes) are read statement by statement: ``assert E`` and
unittest's ``self.assertEqual(a, b)`` family (turned into the assertion they make) are checks. A check
runs as a small function: the test's earlier plain assignments, then the assertion. It is kept only if,
with them, it calls exactly one function imported with ``from MODULE import NAME`` and reads nothing
but builtins and names those assignments bind, so it runs on its own (no fixture, no ``self``). The
module is found among the training documents: the same repository first (its path ending in
``MODULE``'s path, relative imports resolved from the test file), then any repository where it is the
whole path (the standard library is one repository per module, its tests another). Each check counts
as one test, so a wrong body reads as "k of n tests passed".
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from components.problems.doctests import (
    CHECK_FOOTER,
    CHECK_HEADER,
    MinedProblem,
    function_parts,
    module_imports,
    module_names,
)

TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
BUILTIN_NAMES = frozenset(dir(builtins))
#: Larger test files are not read: parsing them costs seconds, and their tests lean on fixtures and
#: helpers, so they give next to no self-contained check (the standard library's: 745 files, 20 s).
MAX_TEST_FILE_CHARS = 32_000
#: Checks kept per function (the first ones, in file order).
MAX_CHECKS = 20
#: unittest assertions with two operands, as the comparison they make.
COMPARISONS: dict[str, type[ast.cmpop]] = {
    "assertEqual": ast.Eq,
    "assertEquals": ast.Eq,
    "assertNotEqual": ast.NotEq,
    "assertIs": ast.Is,
    "assertIsNot": ast.IsNot,
    "assertIn": ast.In,
    "assertNotIn": ast.NotIn,
    "assertGreater": ast.Gt,
    "assertGreaterEqual": ast.GtE,
    "assertLess": ast.Lt,
    "assertLessEqual": ast.LtE,
}


def unittest_check(call: ast.Call) -> ast.expr | None:
    """The assertion a ``self.assert*(...)`` call makes, as an expression; None for other calls."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"):
        return None
    name, args = func.attr, call.args
    if name in COMPARISONS and len(args) >= 2:
        return ast.Compare(args[0], [COMPARISONS[name]()], [args[1]])
    if name in ("assertTrue", "assert_") and args:
        return args[0]
    if name == "assertFalse" and args:
        return ast.UnaryOp(ast.Not(), args[0])
    if name in ("assertIsNone", "assertIsNotNone") and args:
        operator = ast.Is() if name == "assertIsNone" else ast.IsNot()
        return ast.Compare(args[0], [operator], [ast.Constant(None)])
    return None


def test_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """The module's test functions and its test classes' test methods."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            found.append(node)
        elif isinstance(node, ast.ClassDef) and (
            node.name.startswith("Test") or node.name.endswith("TestCase")
        ):
            found += [
                item
                for item in node.body
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test")
            ]
    return found


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _called(node: ast.AST, functions: set[str]) -> set[str]:
    return {
        n.func.id
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions
    }


def self_contained_checks(tree: ast.Module, imported: set[str]) -> dict[str, list[str]]:
    """Per imported function name, its checks that run on their own: a check as a small function of the
    test's earlier plain assignments (``x = ...`` reading only builtins, imported functions and names
    bound so before) and its assertion, which together call exactly that one imported function."""
    checks: dict[str, list[str]] = defaultdict(list)
    for function in test_functions(tree):
        setup: list[ast.stmt] = []
        bound: set[str] = set()
        for statement in function.body:
            allowed = imported | BUILTIN_NAMES | bound
            if isinstance(statement, ast.Assign):
                targets = {n.id for t in statement.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                plain = all(isinstance(t, ast.Name | ast.Tuple) for t in statement.targets)
                if plain and _names(statement.value) <= allowed:
                    setup.append(statement)
                    bound |= targets
                else:
                    bound -= targets
                continue
            if isinstance(statement, ast.Assert):
                check: ast.expr | None = statement.test
            elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
                check = unittest_check(statement.value)
            else:
                continue
            if check is None or not _names(check) <= allowed:
                continue
            called = _called(check, imported).union(*(_called(line, imported) for line in setup))
            reads = _names(check).union(*(_names(line) for line in setup)) - bound - BUILTIN_NAMES
            if len(called) != 1 or reads != called:  # exactly the one function, no other import
                continue
            lines = [ast.unparse(line) for line in setup] + [f"return {ast.unparse(check)}"]
            checks[called.pop()].append("\n".join(lines))
    return checks


def imported_functions(tree: ast.Module, test_path: str) -> dict[str, str]:
    """``name -> module path`` (``a/b``, no suffix) of each ``from MODULE import name`` at the top level
    (relative imports resolved from ``test_path``; renamed imports left out)."""
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        parts = node.module.split(".")
        if node.level:
            base = PurePosixPath(test_path).parent.parts
            up = node.level - 1
            if up > len(base):
                continue
            parts = [*base[: len(base) - up], *parts]
        for alias in node.names:
            if alias.asname is None and alias.name != "*":
                found[alias.name] = "/".join(parts)
    return found


class ModuleIndex:
    """Training documents by path, to find the module a test imports."""

    def __init__(self, documents: Sequence[dict[str, Any]]) -> None:
        self.by_repo: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for document in documents:
            self.by_repo[document["repo"]].append(document)
            self.by_path[document["path"]].append(document)

    def find(self, module: str, repo: str) -> dict[str, Any] | None:
        """The document of ``module`` (``a/b``) for a test in ``repo``, or None."""
        candidates = (f"{module}.py", f"{module}/__init__.py")
        for document in self.by_repo[repo]:
            path = document["path"]
            if any(path == c or path.endswith(f"/{c}") for c in candidates):
                return document
        for candidate in candidates:
            if len(self.by_path[candidate]) == 1:  # a unique whole path: no guessing between repositories
                return self.by_path[candidate][0]
        return None


def _parsed(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def repo_test_problems(
    documents: Sequence[dict[str, Any]], min_tests: int = 1
) -> tuple[list[tuple[MinedProblem, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """The problems of the test files among ``documents`` (Python training documents), each with the
    module document its function comes from; and each tested function skipped, as ``(reason, its
    module document)``."""
    index = ModuleIndex(documents)
    gathered: dict[tuple[str, str], list[str]] = defaultdict(list)  # (module id, function) -> checks
    modules: dict[str, dict[str, Any]] = {}
    for document in documents:
        if not TEST_FILE.search(document["path"]) or len(document["content"]) > MAX_TEST_FILE_CHARS:
            continue
        tree = _parsed(document["content"])
        if tree is None:
            continue
        imported = imported_functions(tree, document["path"])
        for name, checks in self_contained_checks(tree, set(imported)).items():
            module = index.find(imported[name], document["repo"])
            if module is None or module["id"] == document["id"]:
                continue
            modules[module["id"]] = module
            gathered[(module["id"], name)] += [c for c in checks if c not in gathered[(module["id"], name)]]
    skipped: list[tuple[str, dict[str, Any]]] = []
    problems = []
    for (module_id, name), checks in sorted(gathered.items()):
        module = modules[module_id]
        tree = _parsed(module["content"])
        function = next(
            (n for n in (tree.body if tree else []) if isinstance(n, ast.FunctionDef) and n.name == name),
            None,
        )
        if tree is None or function is None:
            continue  # imported from the module but not defined there (a re-export, a class)
        lines = module["content"].splitlines(keepends=True)
        parts = function_parts(function, lines, module_imports(tree, lines), module_names(tree))
        if isinstance(parts, str):
            skipped.append((f"tested_{parts}", module))
            continue
        checks = checks[:MAX_CHECKS]
        if len(checks) < min_tests:
            skipped.append(("too_few_tests", module))
            continue
        body = "".join(
            f"    def check_{number}():\n{textwrap.indent(check, ' ' * 8)}\n    holds(check_{number})\n"
            for number, check in enumerate(checks)
        )
        test = f"{CHECK_HEADER}{body}{CHECK_FOOTER}"
        prompt, solution = parts
        task_id = f"{module['repo']}/{module['path']}::{name}"
        problems.append((MinedProblem(task_id, prompt, solution, test, name, len(checks)), module))
    return problems, skipped
