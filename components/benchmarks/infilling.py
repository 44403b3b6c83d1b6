"""HumanEval-Infilling (Bavarian et al., 2022), built from HumanEval's canonical solutions.

- ``single``: each non-blank line of a canonical solution masked in turn (1,033 tasks from the 164
  problems): prefix = the prompt and the lines before it, middle = the line, suffix = the lines after.
- ``multi``: each block of consecutive lines that starts and ends on a non-blank line (5,815 tasks).

Task ids follow the released files: ``SingleLineInfilling/HumanEval/0/L3``,
``MultiLineInfilling/HumanEval/0/L3_L5``. Tasks whose *empty* middle passes the tests (27 single-line,
55 multi-line: a masked line the tests do not need) are left out, listed in ``trivial_infills.json``
(written by ``python -m components.evaluate.trivial_infills``): 1,006 and 5,760 tasks remain, where
canonical middles pass 100% and empty ones 0%. A single-line middle ends at its newline, so its generation
stops there; a multi-line middle ends where the model ends it (its end-of-text token).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from components.benchmarks import Problem

KINDS = {"single": "SingleLineInfilling", "multi": "MultiLineInfilling"}
TRIVIAL_FILE = Path(__file__).with_name("trivial_infills.json")


@cache
def trivial_tasks() -> frozenset[str]:
    """Ids of the tasks an empty middle passes (left out of the sets)."""
    return frozenset(json.loads(TRIVIAL_FILE.read_text(encoding="utf-8")))


def masked_spans(solution: str, kind: str) -> list[tuple[int, int]]:
    """(first, last) line indices of each masked block of ``solution``, in HumanEval-Infilling's order."""
    lines = solution.splitlines(keepends=True)
    code = [index for index, line in enumerate(lines) if line.strip()]
    if kind == "single":
        return [(index, index) for index in code]
    return [(first, last) for n, first in enumerate(code) for last in code[n:]]


def infilling_problems(
    humaneval: list[Problem], kind: str, benchmark: str, keep_trivial: bool = False
) -> list[Problem]:
    """The ``kind`` (``single`` or ``multi``) infilling tasks of HumanEval's problems (without the trivial
    ones unless ``keep_trivial``)."""
    skipped = frozenset() if keep_trivial else trivial_tasks()
    if kind not in KINDS:
        raise ValueError(f"infilling kind must be one of {sorted(KINDS)}, got {kind!r}")
    tasks = []
    for problem in humaneval:
        assert problem.gold is not None  # HumanEval has canonical solutions
        lines = problem.gold.splitlines(keepends=True)
        for first, last in masked_spans(problem.gold, kind):
            span = f"L{first}" if kind == "single" else f"L{first}_L{last}"
            task_id = f"{KINDS[kind]}/{problem.task_id}/{span}"
            if task_id in skipped:
                continue
            tasks.append(
                replace(
                    problem,
                    benchmark=benchmark,
                    task_id=task_id,
                    prompt=problem.prompt + "".join(lines[:first]),
                    gold="".join(lines[first : last + 1]),
                    suffix="".join(lines[last + 1 :]),
                    infilling=True,
                    stop=("\n",) if kind == "single" else (),
                )
            )
    return tasks
