"""Benchmarks as data: the four formats, format detection, errors naming file and line, and the
infilling sets built from HumanEval (checked in the sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.benchmarks import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    humaneval_file,
    load_benchmark,
    mbpp_prompt,
    read_problems,
    stable_subset,
)
from components.benchmarks.infilling import infilling_problems, trivial_tasks
from components.errors import ParamsError, StageError
from components.evaluate.scoring import score_samples
from components.params import parse_params
from components.params.evaluate import BenchmarkSpec, default_benchmarks

MBPP_RECORD = {
    "task_id": 11,
    "text": "Write a python function to remove first and last occurrence of a given character from the "
    "string.",
    "code": "def remove_Occ(s,ch):\r\n    s = s.replace(ch, '', 1)\r\n"
    "    s = s[::-1].replace(ch, '', 1)\r\n    return s[::-1]",
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ],
    "test_setup_code": "",
    "challenge_test_list": [],
}
MULTIPLE_RECORD = {
    "name": "HumanEval_53_add",
    "language": "js",
    "prompt": "//Add two numbers x and y\nfunction add(x, y){\n",
    "doctests": "transform",
    "original": "HumanEval/53",
    "prompt_terminology": "reworded",
    "tests": "const assert = require('node:assert');\n\nfunction test() {\n  let candidate = add;\n"
    "  assert.deepEqual(candidate(0, 1),1);\n}\n\ntest();",
    "stop_tokens": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"],
}
INFILL_RECORD = {
    "task_id": "SingleLineInfilling/HumanEval/53/L0",
    "entry_point": "add",
    "prompt": "def add(x: int, y: int):\n",
    "suffix": "",
    "canonical_solution": "    return x + y\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def test_humaneval_is_the_installed_package_with_its_stop_sequences() -> None:
    problems = load_benchmark(BenchmarkSpec(name="humaneval", builtin="humaneval"))
    assert (
        len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[0].stop == HUMANEVAL_STOP
    )
    first = problems[0]
    assert first.program(first.gold or "").endswith("\ncheck(has_close_elements)\n")


def test_mbpp_prompt_is_the_description_and_first_test_and_the_program_runs_every_test(
    tmp_path: Path,
) -> None:
    [problem] = read_problems(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_RECORD]))
    assert problem.task_id == "11" and problem.stop == MBPP_STOP
    assert problem.prompt == mbpp_prompt(MBPP_RECORD["text"], MBPP_RECORD["test_list"][0])
    assert (
        problem.prompt.startswith('"""\nWrite a python function')
        and 'remove_Occ("hello","l")' in problem.prompt
    )
    assert "\r" not in (problem.gold or "")
    program = problem.program(problem.gold or "")
    assert all(test in program for test in MBPP_RECORD["test_list"])
    [result] = score_samples([{"task_id": "11", "completion": problem.gold}], {"11": problem})
    assert result["passed"], result


def test_multipl_e_keeps_its_language_stop_tokens_and_program_shape(tmp_path: Path) -> None:
    [problem] = read_problems(write_jsonl(tmp_path / "humaneval-js.jsonl", [MULTIPLE_RECORD]))
    assert problem.task_id == "HumanEval_53_add" and problem.language == "js"
    assert problem.stop == tuple(MULTIPLE_RECORD["stop_tokens"]) and problem.gold is None
    completion = "  return x + y;\n}"
    assert (
        problem.program(completion)
        == MULTIPLE_RECORD["prompt"] + completion + "\n" + MULTIPLE_RECORD["tests"] + "\n"
    )


def test_infilling_program_puts_the_middle_between_prefix_and_suffix(tmp_path: Path) -> None:
    [problem] = read_problems(write_jsonl(tmp_path / "infill.jsonl", [INFILL_RECORD]))
    assert problem.infilling and problem.gold == "    return x + y\n"
    [passed, empty] = score_samples(
        [
            {"task_id": problem.task_id, "completion": "    return x + y"},
            {"task_id": problem.task_id, "completion": ""},
        ],
        {problem.task_id: problem},
    )
    assert passed["passed"] and not empty["passed"]


@pytest.mark.parametrize(
    ("record", "named"),
    [(MBPP_RECORD, "mbpp"), (MULTIPLE_RECORD, "multipl-e"), (INFILL_RECORD, "infilling")],
)
def test_a_named_format_reads_the_same_as_the_detected_one(tmp_path: Path, record: dict, named: str) -> None:
    path = write_jsonl(tmp_path / "problems.jsonl", [record])
    assert read_problems(path, named) == read_problems(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"name": "x"}'], ":1: fields ['name'] match no benchmark format"),
        ([json.dumps(INFILL_RECORD), "{not json"], ":2: invalid JSON"),
        (
            [json.dumps({**MBPP_RECORD, "test_list": "assert 1"})],
            ":1: field 'test_list' must be a list of strings",
        ),
        ([json.dumps({**INFILL_RECORD, "suffix": 3})], ":1: field 'suffix' must be a string"),
        (
            [json.dumps(INFILL_RECORD), json.dumps(INFILL_RECORD)],
            ":2: task 'SingleLineInfilling/HumanEval/53/L0' appears twice",
        ),
        (
            [json.dumps(MBPP_RECORD), json.dumps({"task_id": 2, "text": "t", "code": "c"})],
            ":2: missing 'test_list'",
        ),
        ([""], ": benchmark file holds no problems"),
    ],
)
def test_a_bad_problem_file_names_the_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StageError) as error:
        read_problems(str(path))
    assert str(error.value).startswith(f"{path}{message}"), error.value


def test_benchmark_entries_are_checked_when_params_load() -> None:
    with pytest.raises(ParamsError, match="exactly one of 'file' and 'builtin'"):
        parse_params({"evaluate": {"benchmarks": [{"name": "x"}]}})
    with pytest.raises(ParamsError, match="benchmark names repeat"):
        parse_params({"evaluate": {"benchmarks": [{"name": "a", "builtin": "humaneval"}] * 2}})
    with pytest.raises(ParamsError, match=r"evaluate\.benchmarks\.0\.format"):
        parse_params({"evaluate": {"benchmarks": [{"name": "a", "file": "x.jsonl", "format": "apps"}]}})


def test_infilling_sets_have_humaneval_infillings_size_less_the_trivial_tasks() -> None:
    humaneval = read_problems(humaneval_file(), "humaneval", "humaneval")
    single, multi = (
        infilling_problems(humaneval, kind, kind, keep_trivial=True) for kind in ("single", "multi")
    )
    assert (len(single), len(multi)) == (1033, 5815)  # HumanEval-Infilling's single- and multi-line counts
    assert single[3].task_id == "SingleLineInfilling/HumanEval/0/L3"
    assert single[3].prompt + (single[3].gold or "") + single[3].suffix == humaneval[0].prompt + (
        humaneval[0].gold or ""
    )
    assert len(trivial_tasks()) == 82
    kept = {kind: infilling_problems(humaneval, kind, kind) for kind in ("single", "multi")}
    assert (len(kept["single"]), len(kept["multi"])) == (1006, 5760)


def test_default_infilling_subsets_pass_with_canonical_middles_and_fail_with_empty_ones() -> None:
    for spec in default_benchmarks()[1:]:
        spec = spec.model_copy(update={"limit": 164})
        problems = {problem.task_id: problem for problem in load_benchmark(spec)}
        gold = score_samples([{"task_id": t, "completion": p.gold} for t, p in problems.items()], problems)
        empty = score_samples([{"task_id": t, "completion": ""} for t in problems], problems)
        assert len(problems) == 164 and all(result["passed"] for result in gold), spec.name
        assert not any(result["passed"] for result in empty), spec.name


def test_a_limit_takes_the_same_problems_every_time() -> None:
    problems = list(load_benchmark(BenchmarkSpec(name="humaneval", builtin="humaneval")))
    first, again = stable_subset(problems, 10), stable_subset(list(reversed(problems)), 10)
    assert len(first) == 10 and {p.task_id for p in first} == {p.task_id for p in again}
    assert [p.task_id for p in first] == sorted(
        (p.task_id for p in first), key=lambda t: int(t.split("/")[1])
    )
