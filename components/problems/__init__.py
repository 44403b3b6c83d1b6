"""problems stage: problems with tests for post-training (SFT's coding stage, RRTF alignment).

Inputs (in this order): ``data/clean`` (documents) and ``data/tokenize`` (the split). Output:
``data/problems/{train,heldout}.jsonl`` in the ``problems`` format (``components/benchmarks``), readable
by ``codemill eval-samples --problems``; dropped problems with their reason in
``data/problems.excluded`` (``codemill inspect problems``).

1. Mined from the training split's Python documents (repositories with anything in the validation split
   are left out, ``components/tokens/splits.py``): module-level functions whose docstrings show doctest
   examples (``problems.mine_doctests``, ``components/problems/doctests.py``), and functions the
   repositories' own test files assert on (``problems.mine_repo_tests``,
   ``components/problems/repo_tests.py``).
2. The user's problem files (``problems.files``, HumanEval or MBPP format), ids prefixed by file name.
3. A problem whose prompt was seen before is a duplicate; one whose prompt or solution overlaps a
   configured benchmark (``evaluate.benchmarks``, the clean stage's check) is dropped.
4. At most ``max_problems`` are kept (lowest hash of the prompt); each canonical solution runs against
   its own tests in the sandbox, and a problem whose solution fails is dropped (``canonical_<kind>``).
5. A hash of the prompt sets ``heldout_fraction`` of them aside (``heldout.jsonl``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from components.benchmarks import Problem, parse_problem, problem_record, read_problems
from components.clean.decontam import benchmark_index, normalize_whitespace
from components.errors import StageError
from components.evaluate.sandbox import isolation_in_force, run_programs, warn_if_weak
from components.params import StageContext
from components.params.problems import ProblemsJob
from components.problems.doctests import MinedProblem, doctest_problems
from components.problems.repo_tests import repo_test_problems
from components.report import StageReport
from components.stage_runner import Exclusions, Input, Stage, StageIO, shard_outputs
from components.tokens.packing import unit_hash
from components.tokens.splits import training_documents

BENCHMARK = "problems"
SPLITS = ("train", "heldout")


def problems_file(directory: str, split: str) -> str:
    """The JSONL file of one split of a problems output (``train`` or ``heldout``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{directory.rstrip('/')}/{split}.jsonl"


def read_split(directory: str, split: str) -> list[Problem]:
    """The problems of one split of a problems output."""
    path = problems_file(directory, split)
    if not Path(path).is_file():
        raise StageError(f"{path}: missing (did the problems stage run?)")
    if not Path(path).stat().st_size:
        return []
    return read_problems(path, "problems", BENCHMARK)


def _source(document: dict) -> dict:
    return {key: document[key] for key in ("id", "repo", "path", "license")}


def mined_problems(job: ProblemsJob, io: StageIO, exclusions: Exclusions) -> list[tuple[Problem, dict]]:
    """The doctest problems and the repository-test problems of the training split, each with the
    document its function comes from."""
    cfg = job.problems
    documents = training_documents(io.input("documents"), io.input("tokens"), "python")
    mined: list[tuple[MinedProblem, dict, str]] = []
    if cfg.mine_doctests:
        for document in documents:
            name = f"{document['repo']}/{document['path']}"
            problems, skipped = doctest_problems(document["content"], name, cfg.min_tests)
            for reason, count in skipped.items():
                for _ in range(count):
                    exclusions.drop(reason, document)
            mined += [(problem, document, "doctests") for problem in problems]
    if cfg.mine_repo_tests:
        problems_from_tests, skipped_functions = repo_test_problems(documents, cfg.min_tests)
        for reason, document in skipped_functions:
            exclusions.drop(reason, document)
        mined += [(problem, document, "repo_tests") for problem, document in problems_from_tests]
    found = []
    for problem, document, kind in mined:
        source = {**_source(document), "mined_from": kind}
        found.append((parse_problem(problem.record(source), "humaneval", BENCHMARK, problem.task_id), source))
    return found


def file_problems(paths: Sequence[str]) -> list[tuple[Problem, dict]]:
    """The problems of the user's files, their ids prefixed by the file's name."""
    found = []
    for path in paths:
        stem = PurePosixPath(path).name.split(".")[0]
        for problem in read_problems(path, benchmark=BENCHMARK):
            renamed = replace(problem, task_id=f"{stem}/{problem.task_id}")
            found.append((renamed, {"file": path}))
    return found


def _excluded_row(problem: Problem, source: dict) -> dict[str, Any]:
    return {
        "id": problem.task_id,
        "repo": source.get("repo"),
        "path": source.get("path") or source.get("file"),
        "lang": problem.language,
        "content": problem.prompt + (problem.gold or ""),
    }


def run(job: ProblemsJob, context: StageContext, io: StageIO) -> StageReport:
    """Mine, read, filter, check and split the problems (see the module docstring)."""
    cfg, limits = job.problems, job.sandbox
    output = io.require_output("problems")
    report = StageReport(stage="problems")
    exclusions = Exclusions()
    mined = mined_problems(job, io, exclusions) if cfg.mine_doctests or cfg.mine_repo_tests else []
    from_files = file_problems(cfg.files)
    index = benchmark_index(job.decontam, job.benchmarks)
    seen: set[str] = set()
    unique = []
    for problem, source in mined + from_files:
        key = normalize_whitespace(problem.prompt)
        if key in seen:
            exclusions.drop("duplicate_prompt", _excluded_row(problem, source))
            continue
        seen.add(key)
        contamination = index.first_contamination(f"{problem.prompt}\n{problem.gold or ''}")
        if contamination is not None:
            detail = f"{contamination.benchmark}/{contamination.task_id} ({contamination.reason})"
            exclusions.drop("benchmark_overlap", _excluded_row(problem, source), detail)
            continue
        unique.append((problem, source))
    unique.sort(key=lambda item: (unit_hash(BENCHMARK, item[0].prompt), item[0].task_id))
    for problem, source in unique[cfg.max_problems :]:
        exclusions.drop("over_max_problems", _excluded_row(problem, source))
    chosen = unique[: cfg.max_problems]
    isolation = isolation_in_force(limits.isolation)
    warn_if_weak(isolation)
    results = run_programs(
        [problem.program(problem.gold or "") for problem, _ in chosen],
        limits.timeout_s,
        limits.memory_mb,
        limits.workers,
        limits.isolation,
        [problem.language for problem, _ in chosen],
    )
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for (problem, source), result in zip(chosen, results, strict=True):
        if not result.passed:
            exclusions.drop(f"canonical_{result.kind}", _excluded_row(problem, source), result.error[:500])
            continue
        split = "heldout" if unit_hash("problems-heldout", problem.prompt) < cfg.heldout_fraction else "train"
        splits[split].append(problem_record(problem, source=source))
    if not any(splits.values()):
        raise StageError(
            f"problems: no problem kept ({len(mined)} mined, {len(from_files)} from problems.files; "
            f"dropped: {dict(exclusions.counts)}); add problems.files or mine a corpus with doctests"
        )
    with shard_outputs(output) as out:
        for split, records in splits.items():
            text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
            Path(problems_file(out.output, split)).write_text(text, encoding="utf-8")
        exclusions.write(out.exclusions("part-00000.parquet"))
    passed = sum(result.passed for result in results)
    report.files_in = len(mined) + len(from_files)
    report.files_out = sum(len(records) for records in splits.values())
    report.merge_drops(exclusions.counts)
    report.metrics = {
        "problems_mined": float(len(mined)),
        "problems_from_repo_tests": float(
            sum(source.get("mined_from") == "repo_tests" for _, source in mined)
        ),
        "problems_from_files": float(len(from_files)),
        "problems_checked": float(len(chosen)),
        "canonical_pass_rate": passed / len(chosen) if chosen else 0.0,
        "problems_train": float(len(splits["train"])),
        "problems_heldout": float(len(splits["heldout"])),
    }
    report.details = {"isolation": isolation}
    return report


#: Only the split's document ids are read from data/tokenize.
STAGE = Stage("problems", run, inputs=(Input("documents"), Input("tokens", "dir")))

__all__ = ["STAGE", "problems_file", "read_split", "run"]
