"""The HumanEval sandbox: verdicts, limits, process cleanup and filesystem isolation, on real programs."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from components.evaluate import sandbox
from components.evaluate.humaneval import load_problems, score_samples
from components.evaluate.sandbox import drops_privileges, run_program, run_programs
from components.params.evaluate import EvaluateConfig


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


def test_environment_is_minimal_and_no_descriptor_is_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid")
    program = textwrap.dedent(
        """
        import os, posix, sys
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ and "HTTPS_PROXY" not in os.environ
        assert sys.stdin.read() == ""
        assert [posix.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
        inherited = []
        for fd in range(4, 1024):  # 3 is the report pipe; nothing of the scorer or the server leaks
            try:
                posix.fstat(fd)
                inherited.append(fd)
            except OSError:
                pass
        assert inherited == [], inherited
        """
    )
    assert run_program(program).passed


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed orphan may stay a zombie until init reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


#: Passes only in a clean process: the builtins, json, the environment and an empty cwd, as a fresh fork has.
CLEAN_CHECK = textwrap.dedent(
    """
    import json, posix
    assert len([1]) == 1 and json.dumps([1]) == "[1]"
    assert posix.listdir(".") == [] and b"CORRUPTED" not in posix.environ
    """
)


def _breakers(pid_dir: Path) -> list[tuple[str, str, str]]:
    """Programs that break their own process or attack the server: (program, kind, message part)."""
    record = f"import posix\nwith open({str(pid_dir)!r} + '/' + str(posix.getpid()), 'w'): pass\n"
    return [
        (
            "import builtins, json, posix, sys\nopen('left-behind.txt', 'w').close()\n"
            "builtins.len = json.dumps = None\nposix.environ[b'CORRUPTED'] = b'1'\nsys.modules.clear()\n",
            "passed",
            "",
        ),
        ("assert 1 == 1\nimport posix\nposix._exit(0)\nassert False", "error", "before the tests finished"),
        ("import posix\nposix.killpg(0, 9)", "error", "SIGKILL"),
        ("import posix\nposix.closerange(0, 1024)", "error", "before the tests finished"),
        (record + "import time\nposix.kill(posix.getppid(), 9)\ntime.sleep(60)", "error", ""),
    ]


def _descendants() -> set[int]:
    """This process's living descendants (other tests of the session may have left helpers running)."""
    return {child.pid for child in psutil.Process().children(recursive=True) if _alive(child.pid)}


@pytest.mark.parametrize(
    "drop",
    [pytest.param(True, marks=pytest.mark.skipif(not drops_privileges(), reason="needs root")), False],
)
def test_a_program_that_breaks_its_process_or_the_server_costs_only_its_own_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: bool
) -> None:
    monkeypatch.setattr(sandbox, "drops_privileges", lambda: drop)
    before = _descendants()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    pid_dir.chmod(0o777)
    breakers = _breakers(pid_dir)
    programs = [program for breaker in breakers for program in (breaker[0], CLEAN_CHECK)]
    results = run_programs([CLEAN_CHECK, *programs], timeout_s=5, workers=1)
    assert results[0].passed and all(result.passed for result in results[2::2]), results
    for (_, kind, message), result in zip(breakers, results[1::2], strict=True):
        assert result.kind == kind and message in result.error, result
    # Signalling the server: refused under the program's own uid; without one the server dies and is replaced.
    expected = "PermissionError" if drop else "the sandbox server died"
    assert expected in results[-2].error
    (killer,) = [int(path.name) for path in pid_dir.iterdir()]
    assert not _alive(killer)
    assert _descendants() - before == set()


def test_a_hung_server_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without its own uid a program can stop the server: the sandbox gives up after the limit plus grace.
    monkeypatch.setattr(sandbox, "drops_privileges", lambda: False)
    monkeypatch.setattr(sandbox, "RUNNER_GRACE_S", 1.0)
    before = _descendants()
    stopper = "import posix, signal, time\nposix.kill(posix.getppid(), signal.SIGSTOP)\ntime.sleep(60)"
    started = time.monotonic()
    results = run_programs([stopper, CLEAN_CHECK], timeout_s=1, workers=1)
    assert [result.kind for result in results] == ["timeout", "passed"], results
    assert "sandbox server exceeded" in results[0].error
    assert time.monotonic() - started < 10
    assert _descendants() - before == set()
