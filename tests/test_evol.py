"""The evol stage: Evol-Instruct against a teacher served on 127.0.0.1 through an OpenAI-compatible API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import evol
from components.benchmarks import Problem, problem_record
from components.errors import StageError
from components.params.evol import EvolFilterConfig
from components.processes import kill_group
from components.stage_runner import call_stage, read_exclusions
from components.train.launch import free_port
from tests.conftest import make_params, wait_http

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-teacher"
SEEDS = [
    "Write a function that sums a list of numbers.",
    "LEAK: write a function that counts the words of a sentence.",
    "SAME: write a function that returns the largest of three numbers.",
    "DUP one: write a function that reverses a list.",
    "DUP two: write a function that reverses a list in place.",
    "HUMANEVAL: write a function that checks two numbers are close.",
    "NOCODE: write a function that totals a shopping basket.",
    "BADCODE: write a function that totals an invoice.",
    "JSCODE: write a function that totals an order.",
    "REFUSE: write a function that totals a receipt.",
]


@pytest.fixture(scope="module")
def teacher_url() -> Iterator[str]:
    """The rule-based teacher (tests/teacher_server.py) on 127.0.0.1, stopped by PID afterwards."""
    port = free_port()
    command = [sys.executable, str(ROOT / "tests" / "teacher_server.py"), str(port), NAME]
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=10)


def _inputs(tmp_path: Path) -> list[str]:
    """A model folder (unused: the endpoint teaches) and a problems output with one training problem."""
    model = tmp_path / "anneal"
    model.mkdir()
    (model / "training.json").write_text("{}")
    problems = tmp_path / "problems"
    problems.mkdir()
    problem = Problem(
        "problems", "mod/double", "python", 'def double(x):\n    """Twice x."""\n', "assert True\n"
    )
    (problems / "train.jsonl").write_text(json.dumps(problem_record(problem)) + "\n")
    (problems / "heldout.jsonl").write_text("")
    return [str(model), str(problems)]


def test_evol_instruct_against_a_served_teacher_evolves_filters_and_decontaminates(
    tmp_path: Path, teacher_url: str
) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in SEEDS))
    params = make_params(
        teacher={"endpoint": teacher_url, "name": NAME},
        evol={"seed_files": [str(seeds)], "rounds": 2, "max_seeds": 100},
    )
    output = str(tmp_path / "evol")
    report = call_stage(evol.STAGE, params, _inputs(tmp_path), output)

    kept = evol.read_evolved(output)
    # Kept: the sum seed and the problem seed in both rounds, and the first of the two DUP seeds.
    assert len(kept) == 5 and report.metrics["kept"] == 5
    assert sorted(record["round"] for record in kept) == [1, 1, 1, 2, 2]
    by_seed = {(record["seed_id"], record["round"]): record for record in kept}
    problem_r2 = by_seed[("mod/double", 2)]
    assert problem_r2["instruction"].startswith("Implement the python function below.")
    assert problem_r2["instruction"].count("\nAlso: ") == 2  # evolved twice: each round adds one clause
    assert (
        problem_r2["operation"]
        in evol.read_operations(str(ROOT / "components/evol/operations.yaml")).operations
    )
    assert all(record["response"].startswith("```python") for record in kept)
    assert not any("has_close_elements" in record["instruction"] for record in kept)
    assert report.drops == {
        "evolution_leaked_template": 1,
        "evolution_failed": 3,  # SAME in round 1, both DUP rewrites in round 2 (no change)
        "duplicate_instruction": 1,
        "benchmark_overlap": 2,
        "no_code": 2,
        "code_does_not_parse": 2,
        "wrong_language": 2,
        "refusal": 2,
    }
    assert report.metrics["seeds"] == 11 and report.metrics["evolved"] == 16
    overlap = read_exclusions(output, "benchmark_overlap").to_pylist()
    assert len(overlap) == 2 and all("humaneval/" in row["detail"] for row in overlap)
    assert report.details["teacher"] == teacher_url

    # A rerun makes the same choices (operations by hash, seeded decoding): the same output.
    again = str(tmp_path / "again")
    (tmp_path / "second").mkdir()
    call_stage(evol.STAGE, params, _inputs(tmp_path / "second"), again)
    assert Path(again, evol.TRAIN_FILE).read_text() == Path(output, evol.TRAIN_FILE).read_text()


def test_response_rules_name_what_they_catch() -> None:
    rules = EvolFilterConfig()
    good = "```python\ndef f():\n    return 1\n```"
    assert evol.response_failure(good, "python", rules) is None
    assert evol.response_failure("```py\ntotal = 1 + 2 + 3\n```", "python", rules) is None  # py: python
    assert evol.response_failure("short", "python", rules) == "response_length"
    assert evol.response_failure("Sorry, as an AI I cannot do that.", "python", rules) == "refusal"
    assert evol.response_failure("Loop over the items, adding each.", "python", rules) == "no_code"
    assert evol.response_failure("```rust\nfn main() {}\n```", "python", rules) == "wrong_language"
    assert evol.response_failure("```\ndef f(:\n    pass\n```", "python", rules) == "code_does_not_parse"
    assert evol.response_failure("```c\nint f(void) { return 1; }\n```", "c", rules) is None
    loose = EvolFilterConfig(require_code=False, check_language=False)
    assert evol.response_failure("Loop over the items, adding each.", "python", loose) is None
    assert evol.evolution_failure("  ", "q", []) == "evolution_failed"
    assert evol.evolution_failure("Write  it", "Write it", []) == "evolution_failed"
    assert (
        evol.evolution_failure("See the #Given Question#", "q", ["#given question#"])
        == "evolution_leaked_template"
    )
    assert evol.cleaned_evolution("#Rewritten Question#: Harder one") == "Harder one"


def test_a_malformed_operations_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "ops.yaml"
    bad.write_text("evolve: 'no placeholders'\nrespond: '{instruction}'\noperations: {a: b}\n")
    with pytest.raises(StageError, match=r"ops\.yaml: evolve: .*must contain \{method\}"):
        evol.read_operations(str(bad))
    bad.write_text("evolve: '{method} {instruction}'\nrespond: '{instruction}'\noperations: {}\n")
    with pytest.raises(StageError, match=r"ops\.yaml: operations"):
        evol.read_operations(str(bad))
