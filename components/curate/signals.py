"""Quality signals of one document: pure functions of its content (and language), computed once per document.

The rules (``rules.py``) read these signals; the exported ones (:data:`SIGNAL_SCHEMA`) are kept as columns on
the documents that survive. Fractions are over all characters of the content (whitespace included), as in
CodeParrot/StarCoder. Python-only signals are ``None`` (null) for other languages.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import Any

import pyarrow as pa

#: Signals kept as columns after BASE_SCHEMA's (names are stable: later stages select on them).
SIGNAL_SCHEMA = pa.schema(
    [
        pa.field("num_chars", pa.int64()),
        pa.field("num_lines", pa.int64()),
        pa.field("max_line_length", pa.int64()),
        pa.field("mean_line_length", pa.float64()),
        pa.field("alnum_fraction", pa.float64()),
        pa.field("alpha_fraction", pa.float64()),
        pa.field("digit_fraction", pa.float64()),
        pa.field("whitespace_fraction", pa.float64()),
        pa.field("hex_word_fraction", pa.float64()),
        pa.field("ast_parses", pa.bool_()),
        pa.field("pass_line_fraction", pa.float64()),
        pa.field("import_line_fraction", pa.float64()),
        pa.field("has_docstring", pa.bool_()),
        pa.field("has_tests", pa.bool_()),
        pa.field("quality_score", pa.float64()),
    ]
)

Signals = dict[str, Any]

# Runs of characters, so counting is a few C-level regex passes rather than a Python loop per character.
ALNUM_RUNS = re.compile(r"[^\W_]+")  # letters and digits (str.isalnum, minus a few rare marks)
ALPHA_RUNS = re.compile(r"[^\W\d_]+")  # letters
DIGIT_RUNS = re.compile(r"\d+")
WHITESPACE_RUNS = re.compile(r"\s+")
HEX_WORDS = re.compile(r"\b0[xX][0-9a-fA-F]+\b")  # OpenCoder's hex words: 0x1F, 0XDEADBEEF
PASS_LINE = re.compile(r"pass\s*(?:#.*)?")  # matched against a stripped line
IMPORT_LINE = re.compile(r"(?:import\s|from\s+\S+\s+import\s)")
TEST_MODULES = frozenset({"unittest", "pytest"})


def _chars_in(pattern: re.Pattern[str], text: str) -> int:
    """Number of characters of ``text`` inside matches of ``pattern``."""
    return sum(map(len, pattern.findall(text)))


def _first_marker_line(content: str, markers: tuple[str, ...]) -> int | None:
    """1-based number of the first line containing one of ``markers`` (lower case), or None."""
    lowered = content.lower()
    positions = [position for marker in markers if (position := lowered.find(marker)) >= 0]
    if not positions:
        return None
    return lowered.count("\n", 0, min(positions)) + 1


def text_signals(content: str, markers: tuple[str, ...]) -> Signals:
    """Language-independent signals: sizes, line lengths, character-class fractions, generation markers."""
    lines = content.splitlines()
    num_chars = len(content)
    line_lengths = [len(line) for line in lines]
    per_char = max(num_chars, 1)
    return {
        "num_chars": num_chars,
        "num_lines": len(lines),
        "max_line_length": max(line_lengths, default=0),
        "mean_line_length": sum(line_lengths) / len(lines) if lines else 0.0,
        "alnum_fraction": _chars_in(ALNUM_RUNS, content) / per_char,
        "alpha_fraction": _chars_in(ALPHA_RUNS, content) / per_char,
        "digit_fraction": _chars_in(DIGIT_RUNS, content) / per_char,
        "whitespace_fraction": _chars_in(WHITESPACE_RUNS, content) / per_char,
        "hex_word_fraction": _chars_in(HEX_WORDS, content) / per_char,
        "autogen_marker_line": _first_marker_line(content, markers),
    }


def _parse_python(content: str) -> ast.Module | None:
    """The module's AST, or None when it does not parse (syntax errors, Python 2, absurd nesting)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for invalid escapes etc.: not our business
        try:
            return ast.parse(content.removeprefix("\ufeff"))  # a UTF-8 BOM is valid at the start of a source
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def _has_docstring(tree: ast.Module) -> bool:
    """True when the module, or any function or class in it, has a docstring."""
    documented = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(node, documented) and ast.get_docstring(node) for node in ast.walk(tree))


def _has_tests(tree: ast.Module) -> bool:
    """True when the module defines ``test_*`` functions or ``Test*`` classes, or imports unittest/pytest."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
            return True
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            return True
        if isinstance(node, ast.Import) and any(
            alias.name.split(".")[0] in TEST_MODULES for alias in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in TEST_MODULES:
            return True
    return False


def python_signals(content: str) -> Signals:
    """Python-only signals: AST parse, ``pass``/import line fractions (of non-blank lines), docs and tests."""
    code_lines = [stripped for line in content.splitlines() if (stripped := line.strip())]
    per_line = max(len(code_lines), 1)
    tree = _parse_python(content)
    return {
        "ast_parses": tree is not None,
        "pass_line_fraction": sum(bool(PASS_LINE.fullmatch(line)) for line in code_lines) / per_line,
        "import_line_fraction": sum(bool(IMPORT_LINE.match(line)) for line in code_lines) / per_line,
        "has_docstring": tree is not None and _has_docstring(tree),
        "has_tests": tree is not None and _has_tests(tree),
    }


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at ``zero_at``, 1 at ``one_at``, linear in between and clipped to [0, 1]."""
    return min(max((value - zero_at) / (one_at - zero_at), 0.0), 1.0)


def quality_score(signals: Signals) -> float:
    """A simple score in [0, 1]: half text quality, a quarter each for docstrings and tests.

    Text quality is the mean of three ramps: alphabetic fraction (0 at 0.25, 1 at 0.55), mean line
    length (1 up to 50 chars, 0 at 100) and numeric noise (digit + hex-word fraction: 1 at 0, 0 at 0.2).
    Docstrings and tests count 0 where unknown (non-Python), so Python files with both score highest.
    """
    text_quality = (
        _ramp(signals["alpha_fraction"], 0.25, 0.55)
        + _ramp(signals["mean_line_length"], 100.0, 50.0)
        + _ramp(signals["digit_fraction"] + signals["hex_word_fraction"], 0.2, 0.0)
    ) / 3
    return (
        0.5 * text_quality + 0.25 * bool(signals.get("has_docstring")) + 0.25 * bool(signals.get("has_tests"))
    )


PYTHON_ONLY = ("ast_parses", "pass_line_fraction", "import_line_fraction", "has_docstring", "has_tests")


def compute_signals(content: str, lang: str, markers: tuple[str, ...]) -> Signals:
    """All signals of one document (Python-only ones are None for other languages), plus ``quality_score``."""
    signals = text_signals(content, markers)
    if lang == "python":
        signals.update(python_signals(content))
    else:
        signals.update(dict.fromkeys(PYTHON_ONLY))
    signals["quality_score"] = quality_score(signals)
    return signals
