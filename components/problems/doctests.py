"""Problems mined from doctests: a function whose docstring shows examples becomes a HumanEval-style
problem (the prompt is the module's imports, the signature and the docstring; the canonical solution is
the body; the tests are the examples, run as checks; the entry point is the function).

Only module-level functions without decorators that read none of their module's own names are mined
(a method needs its class, a decorator or helper its module). Examples are read with :mod:`doctest`'s own
parser. An expression example with an expected output becomes a check: what it prints, then its
``repr`` unless None, compared with doctest's ``OutputChecker`` under the example's flags (``+ELLIPSIS``,
``+NORMALIZE_WHITESPACE``). Other examples run as they are (``>>> x = 5`` sets up later ones); an
example expecting an exception, or marked ``+SKIP``, is left out. The test's last line fails with how
many checks passed, so a wrong body reads as failed tests, and one that raises as a runtime error.
"""

from __future__ import annotations

import ast
import doctest
import textwrap
from collections import Counter
from dataclasses import dataclass

#: The HumanEval ``test`` field's preamble: ``check(candidate)`` counts the checks that hold: ``expect``
#: (a doctest example's output) and ``holds`` (a test's assertion, ``components/problems/repo_tests.py``).
CHECK_HEADER = r"""

import contextlib as _contextlib
import doctest as _doctest
import io as _io


def check(candidate):
    passed, total = 0, 0

    def expect(thunk, want, flags):
        nonlocal passed, total
        printed = _io.StringIO()
        with _contextlib.redirect_stdout(printed):
            value = thunk()
        got = printed.getvalue() + ("" if value is None else repr(value) + "\n")
        total += 1
        passed += _doctest.OutputChecker().check_output(want, got, flags)

    def holds(thunk):
        nonlocal passed, total
        total += 1
        passed += bool(thunk())

"""
CHECK_FOOTER = '    assert passed == total, f"{passed} of {total} tests passed"\n'


@dataclass(frozen=True)
class MinedProblem:
    """One mined problem, in HumanEval's fields, and the document it came from."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    tests: int

    def record(self, source: dict[str, str]) -> dict[str, object]:
        """The HumanEval-format JSONL record, with where it came from."""
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "canonical_solution": self.canonical_solution,
            "test": self.test,
            "entry_point": self.entry_point,
            "tests": self.tests,
            "source": source,
        }


def _is_expression(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


def check_code(examples: list[doctest.Example]) -> tuple[str, int]:
    """The ``check(candidate)`` function of a docstring's examples and its number of checks."""
    lines, checks = [], 0
    for example in examples:
        source = example.source.strip()
        if example.exc_msg is not None or example.options.get(doctest.SKIP):
            continue
        if example.want.strip() and _is_expression(source):
            flags = sum(flag for flag, on in example.options.items() if on)
            # The source on lines of its own: a trailing comment must not swallow the parenthesis.
            lines.append(f"expect(lambda: (\n{source}\n), {example.want!r}, {flags})")
            checks += 1
        else:
            lines.append(source)
    body = textwrap.indent("\n".join(lines), "    ")
    return f"{CHECK_HEADER}{body}\n{CHECK_FOOTER}", checks


def module_names(tree: ast.Module) -> set[str]:
    """Names the module's own top-level statements define (functions, classes, assignments), imports
    left out: a body that reads one needs more of its module than a prompt holds."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def reads_any(node: ast.AST, names: set[str]) -> bool:
    """Whether ``node`` reads one of ``names``."""
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def module_imports(tree: ast.Module, lines: list[str]) -> str:
    """The source of a module's top-level import statements, in order."""
    return "".join(
        "".join(lines[node.lineno - 1 : node.end_lineno or node.lineno])
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    )


def function_parts(
    node: ast.FunctionDef, lines: list[str], imports: str, own_names: set[str]
) -> tuple[str, str] | str:
    """``(prompt, body)`` of a module-level function with a docstring that a prompt can stand for (the
    module's imports, the signature and the docstring), or why it cannot: ``decorated``,
    ``needs_module_names``, ``no_docstring``, ``no_body``."""
    if ast.get_docstring(node) is None:
        return "no_docstring"
    if node.decorator_list:
        return "decorated"
    if any(reads_any(statement, own_names - {node.name}) for statement in node.body[1:]):
        return "needs_module_names"
    header_end = node.body[0].end_lineno or node.body[0].lineno
    header = "".join(lines[node.lineno - 1 : header_end])
    body = "".join(lines[header_end : node.end_lineno or header_end])
    if len(node.body) < 2 or not body.strip():
        return "no_body"
    return (f"{imports}\n\n{header}" if imports else header), body


def doctest_problems(source: str, name: str, min_tests: int = 1) -> tuple[list[MinedProblem], Counter]:
    """The problems of one Python source (``name`` prefixes their task ids) and the functions with
    examples that were skipped, by reason; nothing when it does not parse."""
    skipped: Counter = Counter()
    if ">>>" not in source:  # most files: no examples, no parse
        return [], skipped
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return [], skipped
    lines = source.splitlines(keepends=True)
    imports = module_imports(tree, lines)
    parser = doctest.DocTestParser()
    own_names = module_names(tree)
    problems = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or len(node.body) < 2:
            continue
        docstring = ast.get_docstring(node, clean=True)
        if not docstring or ">>>" not in docstring:
            continue
        parts = function_parts(node, lines, imports, own_names)
        if isinstance(parts, str):
            if parts != "no_body":
                skipped[parts] += 1
            continue
        try:
            examples = parser.get_examples(docstring)
        except ValueError:  # malformed examples (inconsistent indentation)
            skipped["malformed_examples"] += 1
            continue
        test, checks = check_code(examples)
        if checks < min_tests:
            skipped["too_few_tests"] += 1
            continue
        prompt, body = parts
        problems.append(MinedProblem(f"{name}::{node.name}", prompt, body, test, node.name, checks))
    return problems, skipped
