"""The default SFT data, mined offline from the curated corpus's training split.

- From every Python document of the training split (``components/tokens/splits.py``), ``ast`` yields:
  a function's signature + docstring -> the function (its body), and a class's header + docstring ->
  the class (its methods). Functions and classes whose body after the docstring is shorter than
  ``min_body_lines`` are skipped; files that do not parse are skipped.
- A pair that overlaps a benchmark problem (HumanEval by default: the clean stage's decontamination
  index, ``components/clean/decontam.benchmark_index``) is dropped, as is a repeated pair.
- At most ``max_pairs`` pairs are kept: the ones with the lowest hash of their text, so the choice does
  not depend on shard order. The result is sorted by that hash (deterministic).
"""

from __future__ import annotations

import ast
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from components.clean.decontam import benchmark_index
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec
from components.params.sft import MinedConfig
from components.tokens.packing import unit_hash
from components.tokens.splits import training_documents

INSTRUCTIONS = {
    "function": "Complete the body of this Python function so that it does what its docstring says.",
    "class": "Implement the methods of this Python class so that it does what its docstring says.",
}


@dataclass(frozen=True)
class MinedPair:
    """One instruction/response pair and the document it came from."""

    instruction: str
    response: str
    source_id: str

    @property
    def key(self) -> float:
        """The order of mined pairs (a hash of the text)."""
        return unit_hash("sft-pair", self.instruction, self.response)


def _lines(lines: list[str], start: int, end: int) -> str:
    """Lines ``start .. end`` (1-based, inclusive), dedented."""
    return textwrap.dedent("\n".join(lines[start - 1 : end]))


def _code_block(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
#: Fields of a statement that hold statements (definitions are only found there).
STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def definitions(tree: ast.AST) -> Iterator[Definition]:
    """Every function and class definition of ``tree``, nested ones included, in source order. Only
    statement lists are walked (expressions hold no definitions): a tenth of ``ast.walk``'s nodes."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, Definition):
            yield node
        children = [child for name in STATEMENT_FIELDS for child in getattr(node, name, ())]
        pending.extend(reversed(children))


def pairs_from_source(source: str, min_body_lines: int = 2) -> list[tuple[str, str]]:
    """``(instruction, response)`` pairs of the documented functions and classes of a Python source."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = source.splitlines()
    pairs = []
    for node in definitions(tree):
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if ast.get_docstring(node) is None or len(node.body) < 2:
            continue
        docstring_node, rest = node.body[0], node.body[1:]
        last_line = rest[-1].end_lineno or rest[-1].lineno  # ast sets end_lineno on parsed code
        if last_line - rest[0].lineno + 1 < min_body_lines:
            continue
        start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
        header = _lines(lines, start, docstring_node.end_lineno or docstring_node.lineno)
        whole = _lines(lines, start, node.end_lineno or last_line)
        pairs.append((f"{INSTRUCTIONS[kind]}\n\n{_code_block(header)}", _code_block(whole)))
    return pairs


def mine_pairs(
    clean_dir: str,
    data_dir: str,
    config: MinedConfig,
    decontam: DecontamConfig,
    benchmarks: Sequence[BenchmarkSpec],
) -> tuple[list[MinedPair], Counter]:
    """The mined pairs (see the module docstring) and the count of what was dropped, by reason."""
    index = benchmark_index(decontam, benchmarks)
    drops: Counter = Counter()
    pairs: dict[tuple[str, str], MinedPair] = {}
    for row in training_documents(clean_dir, data_dir, "python"):
        for instruction, response in pairs_from_source(row["content"], config.min_body_lines):
            if (instruction, response) in pairs:
                drops["duplicate_pair"] += 1
            elif index.first_contamination(f"{instruction}\n{response}") is not None:
                drops["benchmark_overlap"] += 1
            else:
                pairs[instruction, response] = MinedPair(instruction, response, row["id"])
    ranked = sorted(pairs.values(), key=lambda pair: (pair.key, pair.instruction))
    drops["over_max_pairs"] += max(0, len(ranked) - config.max_pairs)
    return ranked[: config.max_pairs], drops
