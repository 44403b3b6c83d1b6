"""The HumanEval sandbox: verdicts, limits, process cleanup and filesystem isolation, on real programs."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from components.evaluate.config import EvaluateConfig
from components.evaluate.humaneval import load_problems, score_samples
from components.evaluate.sandbox import drops_privileges, run_program


@pytest.mark.slow
def test_canonical_solutions_pass_and_empty_completions_fail() -> None:
    problems = load_problems()
    assert len(problems) == 164
    canonical = [{"task_id": task, "completion": p["canonical_solution"]} for task, p in problems.items()]
    empty = [{"task_id": task, "completion": ""} for task in problems]
    results = score_samples(canonical + empty, problems, EvaluateConfig(workers=2))
    assert sum(r["passed"] for r in results[:164]) == 164, [r for r in results[:164] if not r["passed"]][:3]
    assert sum(r["passed"] for r in results[164:]) == 0
    assert {r["result"] for r in results[164:]} <= {"failed", "error"}


@pytest.mark.parametrize(
    ("program", "kind", "message"),
    [
        ("assert 1 + 1 == 2", "passed", ""),
        ("assert 1 + 1 == 3, 'arithmetic'", "failed", "AssertionError: arithmetic"),
        ("def f(:\n    pass", "syntax", "SyntaxError"),
        ("{}['missing']", "error", "KeyError"),
        ("import sys\nsys.exit(0)", "error", "SystemExit"),
    ],
)
def test_outcome_kinds(program: str, kind: str, message: str) -> None:
    result = run_program(program, timeout_s=5)
    assert result.kind == kind
    assert message in result.error


def test_infinite_loop_times_out() -> None:
    started = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=0.5)
    assert result.kind == "timeout"
    assert time.monotonic() - started < 5


def test_unbounded_allocation_hits_memory_limit() -> None:
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))"
    result = run_program(program, timeout_s=30, memory_mb=256)
    assert result.kind == "memory"
    assert run_program("data = bytearray(2**20)", memory_mb=256).passed


def _spawner(pid_dir: Path, then: str) -> str:
    """A program that starts a subprocess, a forked child and a double-forked setsid() daemon, all of
    which sleep, writes their pids to ``pid_dir``, then runs ``then``. It bypasses the os.fork guard."""
    return textwrap.dedent(
        f"""
        import os.path, posix, subprocess, time
        pid_dir = {str(pid_dir)!r}

        def record(name, pid):
            with open(pid_dir + "/" + name, "w") as file:
                file.write(str(pid))

        record("subprocess", subprocess.Popen(["sleep", "60"]).pid)
        child = posix.fork()
        if child == 0:
            time.sleep(60)
            posix._exit(0)
        record("child", child)
        if posix.fork() == 0:
            posix.setsid()
            if posix.fork() == 0:
                record("daemon", posix.getpid())
                time.sleep(60)
            posix._exit(0)
        while not os.path.exists(pid_dir + "/daemon"):
            time.sleep(0.01)
        {then}
        """
    )


@pytest.mark.parametrize(("then", "kind"), [("pass", "passed"), ("time.sleep(60)", "timeout")])
def test_no_process_survives_the_program(tmp_path: Path, then: str, kind: str) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    pid_dir.chmod(0o777)  # the program may run under its own uid
    result = run_program(_spawner(pid_dir, then), timeout_s=3)
    assert result.kind == kind, result
    pids = {path.name: int(path.read_text()) for path in pid_dir.iterdir()}
    assert set(pids) == {"subprocess", "child", "daemon"}
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid), f"{name} (pid {pid}) is still alive"


def test_program_runs_in_its_own_directory_not_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o777)  # writable by anyone: only the sandbox's cwd can protect it
    (project / "sentinel.txt").write_text("keep me")
    monkeypatch.chdir(project)
    program = textwrap.dedent(
        """
        import posix
        for name in posix.listdir("."):
            posix.unlink(name)
        with open("scratch.txt", "w") as file:
            file.write("temporary")
        assert posix.listdir(".") == ["scratch.txt"]
        assert posix.getcwd() == posix.environ[b"HOME"].decode() == posix.environ[b"TMPDIR"].decode()
        """
    )
    assert run_program(program).passed
    assert sorted(os.listdir(project)) == ["sentinel.txt"]


@pytest.mark.skipif(not drops_privileges(), reason="needs root to run programs under their own uid")
def test_program_cannot_write_to_the_project_tree(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    project.chmod(0o755)
    sentinel = project / "src" / "sentinel.py"
    sentinel.write_text("keep me")
    program = textwrap.dedent(
        f"""
        import posix
        errors = 0
        for attempt in (
            lambda: posix.unlink({str(sentinel)!r}),
            lambda: posix.rename({str(sentinel)!r}, {str(sentinel)!r} + ".moved"),
            lambda: open({str(project / "new.txt")!r}, "w"),
            lambda: posix.chmod({str(project)!r}, 0o777),
        ):
            try:
                attempt()
            except PermissionError:
                errors += 1
        assert errors == 4, errors
        """
    )
    result = run_program(program)
    assert result.passed, result
    assert sorted(p.name for p in project.rglob("*")) == ["sentinel.py", "src"]
    assert sentinel.read_text() == "keep me"


def test_environment_is_minimal_and_stdin_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid")
    program = textwrap.dedent(
        """
        import os, sys
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ and "HTTPS_PROXY" not in os.environ
        assert sys.stdin.read() == ""
        """
    )
    assert run_program(program).passed
