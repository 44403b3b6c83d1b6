"""The problems stage: doctest functions of training repositories become problems whose canonical
bodies pass their own tests; validation repositories and benchmark overlaps stay out."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from components import problems
from components.benchmarks import humaneval_file, read_problems
from components.evaluate.sandbox import run_programs
from components.problems.doctests import doctest_problems
from components.shards import BASE_SCHEMA, make_document, write_shard
from components.stage_runner import call_stage, read_exclusions
from components.tokens.packing import split_paths
from tests.conftest import make_params

MODULE = '''import math

LIMIT = 10


def double(x):
    """Twice x.

    >>> double(2)
    4
    >>> double(-1.5)
    -3.0
    """
    return 2 * x


def hypotenuse(a, b):
    """The long side.

    >>> round(hypotenuse(3, 4), 6)
    5.0
    >>> print("sides", a := 3)
    sides 3
    """
    return math.sqrt(a * a + b * b)


def capped(x):
    """x, at most LIMIT (reads a module name: not mined).

    >>> capped(20)
    10
    """
    return min(x, LIMIT)


def no_examples(x):
    """Nothing to test."""
    return x
'''


def test_doctest_functions_become_problems_whose_canonical_body_passes() -> None:
    found, skipped = doctest_problems(MODULE, "repo/mod.py")
    assert [problem.entry_point for problem in found] == ["double", "hypotenuse"]
    assert skipped == {"needs_module_names": 1}
    double = found[0]
    assert double.prompt.startswith("import math\n") and double.prompt.rstrip().endswith('"""')
    assert double.canonical_solution == "    return 2 * x\n" and double.tests == 2
    programs = [f"{p.prompt}{p.canonical_solution}\n{p.test}\ncheck({p.entry_point})\n" for p in found]
    wrong = f"{double.prompt}    return 3 * x\n\n{double.test}\ncheck(double)\n"
    results = run_programs([*programs, wrong])
    assert [result.kind for result in results] == ["passed", "passed", "failed"]
    assert "0 of 2 tests passed" in results[2].error


def _write_split(tokenize_dir: Path, train: list[str], val: list[str]) -> None:
    tokenize_dir.mkdir(parents=True)
    for split, ids in (("train", train), ("val", val)):
        split_paths(tokenize_dir, split)["ids"].write_text(json.dumps(ids))


def stdlib_documents(limit: int) -> list[dict]:
    """Modules of this interpreter's standard library that carry doctests (the default corpus's kind)."""
    stdlib = Path(json.__file__).parents[1]
    documents = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if ">>>" in text:
            documents.append(make_document(f"stdlib/{path.stem}", path.name, "python", text, license="psf"))
        if len(documents) == limit:
            break
    return documents


def test_stage_mines_training_repos_checks_solutions_and_drops_overlaps(tmp_path: Path) -> None:
    humaneval = read_problems(humaneval_file())[0]  # its prompt shows doctest examples
    documents = stdlib_documents(40)
    planted = make_document("org/planted", "he.py", "python", humaneval.prompt + (humaneval.gold or ""))
    validation = make_document("org/val", "mod.py", "python", MODULE.replace("double", "val_double"))
    documents += [planted, validation]
    clean = tmp_path / "clean"
    clean.mkdir()
    table = pa.Table.from_pylist(documents, schema=pa.schema(BASE_SCHEMA))
    write_shard(table, str(clean / "part-00000.parquet"))
    train_ids = [document["id"] for document in documents]
    _write_split(tmp_path / "tokenize", train_ids[:-1], [validation["id"]])
    user_file = tmp_path / "mine.jsonl"
    user = {"task_id": "1", "text": "Return the square of n.", "code": "def square(n):\n    return n * n\n",
            "test_list": ["assert square(3) == 9"], "test_setup_code": ""}  # fmt: skip
    user_file.write_text(json.dumps(user) + "\n")
    params = make_params(problems={"files": [str(user_file)], "heldout_fraction": 0.3})
    output = str(tmp_path / "problems")
    report = call_stage(problems.STAGE, params, [str(clean), str(tmp_path / "tokenize")], output)

    kept = problems.read_split(output, "train") + problems.read_split(output, "heldout")
    assert len(kept) >= 10 and problems.read_split(output, "heldout")
    assert any(problem.task_id == "mine/1" for problem in kept)
    text = "".join(problem.prompt for problem in kept)
    assert "val_double" not in text and "has_close_elements" not in text
    assert report.drops["benchmark_overlap"] >= 1
    assert read_exclusions(output, "benchmark_overlap").num_rows == report.drops["benchmark_overlap"]
    results = run_programs([problem.program(problem.gold or "") for problem in kept])
    assert sum(result.passed for result in results) >= 0.95 * len(kept)
    checked = report.metrics["problems_checked"]
    assert report.metrics["canonical_pass_rate"] * checked == len(kept)


MATHUTIL = '''import math


LIMIT = 10


def clamp(x, low, high):
    """Limit x to the range [low, high]."""
    return max(low, min(x, high))


def scale(x, factor):
    """x times factor."""
    result = x * factor
    return result


def wrong_double(x):
    """Twice x (but the body is wrong)."""
    return x * 3


def bare(x):
    return x


def limited(x):
    """x, at most LIMIT."""
    return min(x, LIMIT)
'''

TEST_MATHUTIL = """import unittest

from pkg.mathutil import bare, clamp, limited, scale, wrong_double
from .helpers import expected


def test_clamp():
    assert clamp(5, 0, 3) == 3
    value = clamp(-1, 0, 3)
    assert value == 0
    assert clamp(2, 0, 3) == expected  # reads a helper: not self-contained


def test_others():
    assert wrong_double(2) == 4
    assert bare(1) == 1
    assert limited(50) == 10
    assert clamp(1, 0, 3) == scale(1, 1)  # two functions: whose test is it?


class TestScale(unittest.TestCase):
    def test_scale(self):
        self.assertEqual(scale(2, 3), 6)
        self.assertTrue(scale(1, 1) == 1)
        self.assertEqual(self.factor, 1)  # reads self: not self-contained
"""


def test_functions_the_repository_tests_assert_on_become_problems(tmp_path: Path) -> None:
    documents = [
        make_document("org/lib", "src/pkg/mathutil.py", "python", MATHUTIL),
        make_document("org/lib", "tests/test_mathutil.py", "python", TEST_MATHUTIL),
    ]
    clean = tmp_path / "clean"
    clean.mkdir()
    write_shard(
        pa.Table.from_pylist(documents, schema=pa.schema(BASE_SCHEMA)), str(clean / "part-00000.parquet")
    )
    _write_split(tmp_path / "tokenize", [document["id"] for document in documents], [])
    params = make_params(problems={"mine_doctests": False, "heldout_fraction": 0.01})
    output = str(tmp_path / "problems")
    report = call_stage(problems.STAGE, params, [str(clean), str(tmp_path / "tokenize")], output)

    kept = {problem.task_id: problem for problem in problems.read_split(output, "train")}
    assert set(kept) == {"org/lib/src/pkg/mathutil.py::clamp", "org/lib/src/pkg/mathutil.py::scale"}
    clamp, scale = kept["org/lib/src/pkg/mathutil.py::clamp"], kept["org/lib/src/pkg/mathutil.py::scale"]
    assert clamp.prompt.startswith("import math\n") and clamp.prompt.rstrip().endswith(
        '"""Limit x to the range [low, high]."""'
    )
    assert "value = clamp(-1, 0, 3)" in clamp.tests and "expected" not in clamp.tests
    assert "self.factor" not in scale.tests and scale.tests.count("holds(check_") == 2
    assert report.metrics["problems_from_repo_tests"] == 3  # clamp, scale and wrong_double
    assert report.drops["canonical_failed"] == 1  # wrong_double's body fails its test: dropped
    assert report.drops["tested_no_docstring"] == 1 and report.drops["tested_needs_module_names"] == 1
    # A wrong body reads as failed tests, not as an error.
    wrong = run_programs([clamp.program("    return x\n")])[0]
    assert wrong.kind == "failed" and "of 2 tests passed" in wrong.error
