"""Scoring completions of any benchmark format in the sandbox: per-sample results and pass@k.

Generation and scoring are separate steps: a samples file (JSONL, one completion per line with its
``task_id``; several lines per task are n samples) is scored here without the model, so a scoring rule
or sandbox change reruns on saved generations. :func:`score_file` is what ``codemill eval-samples
SAMPLES.jsonl --problems FILE`` runs. A sample names its problem by ``task_id`` (for MultiPL-E, the
problem's ``name``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from components.benchmarks import Problem, humaneval_file, read_problems
from components.errors import StageError
from components.evaluate.passk import mean_pass_at_k, pass_at_k
from components.evaluate.sandbox import isolation_in_force, run_programs
from components.evaluate.stats import Measure
from components.params.evaluate import EvaluateConfig
from components.shards import iter_jsonl

#: Characters of a completion's error message kept in the per-sample results.
MAX_ERROR_CHARS = 300


def score_samples(
    samples: Sequence[dict], problems: dict[str, Problem], config: EvaluateConfig | None = None
) -> list[dict]:
    """Run every sample (``task_id``, ``completion``, any other fields kept) in the sandbox; one result
    per sample, in order, adding completion_id (index among that task's samples), passed, result (the
    outcome kind), error (truncated) and seconds."""
    config = config or EvaluateConfig()
    chosen = [problems[sample["task_id"]] for sample in samples]
    outcomes = run_programs(
        [problem.program(sample["completion"]) for problem, sample in zip(chosen, samples, strict=True)],
        config.timeout_s,
        config.memory_mb,
        config.workers,
        config.isolation,
        [problem.language for problem in chosen],
    )
    seen: Counter[tuple[str, str]] = Counter()
    results = []
    for sample, outcome in zip(samples, outcomes, strict=True):
        key = (str(sample.get("mode", "")), sample["task_id"])
        results.append(
            {
                **sample,
                "completion_id": seen[key],
                "passed": outcome.passed,
                "result": outcome.kind,
                "error": outcome.error[:MAX_ERROR_CHARS],
                "seconds": round(outcome.seconds, 4),
            }
        )
        seen[key] += 1
    return results


def _counts(results: Sequence[dict]) -> dict[str, tuple[int, int]]:
    """(samples, correct) per task of the results that ran (skipped ones left out), in first-seen order."""
    totals: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for result in results:
        if result["result"] != "skipped":
            totals[result["task_id"]] += 1
            correct[result["task_id"]] += result["passed"]
    return {task: (totals[task], correct[task]) for task in totals}


def summarize(results: Sequence[dict], ks: Sequence[int]) -> dict[str, Any]:
    """pass@k (unbiased, per problem then averaged) of scored samples, with counts per outcome kind.

    Samples of a language whose toolchain is missing are ``skipped``: left out of pass@k, counted under
    ``skipped``; with nothing else, the summary says so instead of reporting 0.
    """
    kinds = Counter(result["result"] for result in results)
    counts = _counts(results)
    summary: dict[str, Any] = {"n_samples": len(results), "problems": len(counts), "outcomes": dict(kinds)}
    if not counts:
        reasons = sorted({result["error"] for result in results if result["result"] == "skipped"})
        return {**summary, "skipped": "; ".join(reasons) or "no samples"}
    scores, notes = mean_pass_at_k(list(counts.values()), ks)
    summary.update(scores)
    if kinds["skipped"]:
        summary["skipped_samples"] = kinds["skipped"]
    if notes:
        summary["notes"] = notes
    return summary


def pass_at_k_measure(name: str, results: Sequence[dict], k: int) -> Measure | None:
    """pass@k as a :class:`Measure` over problems (for its interval), or None when k exceeds a problem's
    samples or nothing ran."""
    counts = _counts(results)
    if not counts or k > min(n for n, _ in counts.values()):
        return None
    return Measure.mean(name, list(counts), [pass_at_k(n, c, k) for n, c in counts.values()])


def read_samples(path: str, problems: dict[str, Problem]) -> list[dict]:
    """Samples of a JSONL file; a bad line raises StageError naming the file and line number."""
    samples = []
    for where, sample in iter_jsonl(path):
        task = sample.get("task_id", sample.get("name"))
        if not isinstance(task, str) or not isinstance(sample.get("completion"), str):
            raise StageError(f"{where}: needs string fields 'task_id' (or 'name') and 'completion'")
        if task not in problems:
            raise StageError(f"{where}: unknown task_id {task!r} (not in the problems file)")
        samples.append({**sample, "task_id": task})
    if not samples:
        raise StageError(f"{path}: no samples")
    return samples


def score_file(
    samples_path: str,
    config: EvaluateConfig,
    problems_path: str | None = None,
    format_name: str | None = None,
) -> tuple[list[dict], dict]:
    """Score a samples file against a problems file (any format; default HumanEval's) in the sandbox:
    per-sample results and the summary (pass@k, outcomes, the isolation in force)."""
    problems = {
        problem.task_id: problem
        for problem in read_problems(problems_path or humaneval_file(), format_name, "samples")
    }
    results = score_samples(read_samples(samples_path, problems), problems, config)
    return results, {
        **summarize(results, config.k),
        "sandbox_isolation": isolation_in_force(config.isolation),
    }
