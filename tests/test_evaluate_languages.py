"""The sandbox's language table: MultiPL-E problem files per language, written here (3 problems each),
scored through the real toolchains in the sandbox. Canonical solutions pass; a wrong answer is
``failed``, code that does not compile (or parse) is ``syntax``, a crash is ``error``; a language whose
toolchain is missing is ``skipped``, never 0%."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.benchmarks import read_problems
from components.evaluate import languages
from components.evaluate.scoring import score_samples, summarize
from components.params.evaluate import EvaluateConfig
from tests.conftest import PROJECT_ROOT

#: Three problems (name, a, b, expected) on two integers: f(6, 3).
PROBLEMS = [("add", 9), ("sub", 3), ("mul", 18)]
OPERATOR = {"add": "+", "sub": "-", "mul": "*"}

#: Per language: prompt and tests templates (MultiPL-E's shape: the tests close the function in the
#: braced languages), a correct body per operator, and a wrong, a non-compiling and a crashing body.
LANGUAGE_CASES: dict[str, dict[str, str]] = {
    "py": {
        "prompt": "def {name}(a, b):\n",
        "tests": "def check(candidate):\n    assert candidate(6, 3) == {expected}\n\ncheck({name})\n",
        "body": "    return a {op} b\n",
        "wrong": "    return a + b + 1\n",
        "syntax": "    return a +\n",
        "crash": "    return [][1]\n",
    },
    "js": {
        "prompt": "function {name}(a, b){{\n",
        "tests": "const assert = require('node:assert');\n\nfunction test() {{\n  let candidate = {name};\n"
        "  assert.deepEqual(candidate(6, 3),{expected});\n}}\n\ntest();\n",
        "body": "  return a {op} b;\n}}\n",
        "wrong": "  return a + b + 1;\n}\n",
        "syntax": "  return a +;\n}\n",
        "crash": "  return null.x;\n}\n",
    },
    "cpp": {
        "prompt": "#include<assert.h>\n#include<bits/stdc++.h>\nlong {name}(long a, long b) {{\n",
        "tests": "}}\nint main() {{\n    auto candidate = {name};\n"
        "    assert(candidate(6, 3) == ({expected}));\n}}\n",
        "body": "    return a {op} b;\n",
        "wrong": "    return a + b + 1;\n",
        "syntax": "    return a +;\n",
        "crash": "    std::vector<long> v; return v.at(5);\n",
    },
    "rs": {
        "prompt": "fn {name}(a: isize, b: isize) -> isize {{\n",
        "tests": "}}\n\nfn main() {{\n    let candidate = {name};\n"
        "    assert_eq!(candidate(6, 3), {expected});\n}}\n",
        "body": "    a {op} b\n",
        "wrong": "    a + b + 1\n",
        "syntax": "    a +\n",
        "crash": "    let v: Vec<isize> = vec![]; v[a as usize]\n",
    },
    "java": {
        "prompt": "import java.util.*;\n\nclass Problem {{\n"
        "    public static long {name}(long a, long b) {{\n",
        "tests": "    }}\n    public static void main(String[] args) {{\n"
        "    assert({name}((6l), (3l)) == ({expected}l));\n"
        "    }}\n\n}}\n",
        "body": "        return a {op} b;\n",
        "wrong": "        return a + b + 1;\n",
        "syntax": "        return a +;\n",
        "crash": "        String s = null; return s.length();\n",
    },
    "sh": {
        "prompt": "#!/bin/bash\n{name}() {{\n",
        "tests": '}}\n\ncandidate() {{\n    {name} "$@"\n}}\n\nset -e\nrun_test() {{\n'
        '    [[ $(candidate "6" "3") = "{expected}" ]]\n}}\n\nrun_test\n',
        "body": "    echo $(( $1 {op} $2 ))\n",
        "wrong": "    echo $(( $1 + $2 + 1 ))\n",
        "syntax": "    if then fi\n",
        "crash": "    no_such_command_here\n",
    },
}


def write_problems(directory: Path, code: str) -> Path:
    """A MultiPL-E problem file of the three problems in language ``code``."""
    case = LANGUAGE_CASES[code]
    records = [
        {
            "name": f"{code}_{name}",
            "language": code,
            "prompt": case["prompt"].format(name=name),
            "tests": case["tests"].format(name=name, expected=expected),
            "stop_tokens": ["\n}"],
        }
        for name, expected in PROBLEMS
    ]
    path = directory / f"multipl-e-{code}.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def completions(code: str) -> list[dict]:
    """Samples: each problem's correct body (a template), then the first problem's wrong, syntax and crash
    bodies (as they are)."""
    case = LANGUAGE_CASES[code]
    samples = [
        {"task_id": f"{code}_{name}", "completion": case["body"].format(op=OPERATOR[name])}
        for name, _ in PROBLEMS
    ]
    return samples + [
        {"task_id": f"{code}_add", "completion": case[kind]} for kind in ("wrong", "syntax", "crash")
    ]


@pytest.mark.parametrize("code", sorted(LANGUAGE_CASES))
def test_each_language_passes_canonical_and_fails_each_wrong_kind_for_its_reason(
    tmp_path: Path, code: str
) -> None:
    if reason := languages.missing_tools(code):
        pytest.skip(reason)  # the machine lacks the toolchain (the next test covers that case)
    problems = {problem.task_id: problem for problem in read_problems(str(write_problems(tmp_path, code)))}
    assert {problem.language for problem in problems.values()} == {code}
    results = score_samples(completions(code), problems, EvaluateConfig(timeout_s=10))
    kinds = [result["result"] for result in results]
    messages = [result["error"] for result in results]
    assert kinds == ["passed", "passed", "passed", "failed", "syntax", "error"], messages
    assert summarize(results[:3], [1])["pass@1"] == 1.0


def test_every_row_names_its_commands_and_a_file() -> None:
    for row in languages.LANGUAGES:
        assert row.file_name and (row.in_process or row.run), row
        assert languages.language(row.name) is row and all(
            languages.language(code) is row for code in row.codes
        )


def test_a_missing_toolchain_is_skipped_not_scored_zero(tmp_path: Path) -> None:
    # A fresh interpreter whose PATH has no node: the JavaScript problems are skipped, with the reason.
    path = write_problems(tmp_path, "js")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps(sample) + "\n" for sample in completions("js")[:3]), encoding="utf-8"
    )
    script = (
        "import json; from components.evaluate.scoring import score_file; "
        "from components.params.evaluate import EvaluateConfig; "
        f"config = EvaluateConfig(k=[1], n_samples=1); "
        f"print(json.dumps(score_file({str(samples)!r}, config, {str(path)!r})[1]))"
    )
    env = {**os.environ, "PATH": str(tmp_path / "no-tools")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert "pass@1" not in summary and summary["outcomes"] == {"skipped": 3}
    assert summary["skipped"] == "toolchain not found: node"
