"""The execution sandbox on real programs: verdicts, limits, process cleanup, and isolation from the
network, the host's files and processes, and the scorer (docs/security.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from components.benchmarks import load_benchmark
from components.evaluate import sandbox
from components.evaluate.sandbox import (
    ForkServer,
    drops_privileges,
    isolation_in_force,
    run_program,
    run_programs,
)
from components.evaluate.scoring import score_samples
from components.params.evaluate import BenchmarkSpec, EvaluateConfig
from tests.conftest import PROJECT_ROOT

NAMESPACES = isolation_in_force("auto") == "namespaces"
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="this machine allows no namespaces")


def test_canonical_solutions_pass_and_empty_completions_fail() -> None:
    problems = {p.task_id: p for p in load_benchmark(BenchmarkSpec(name="humaneval", builtin="humaneval"))}
    assert len(problems) == 164
    canonical = [{"task_id": task, "completion": p.gold} for task, p in problems.items()]
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


def test_error_text_is_truncated() -> None:
    result = run_program("raise ValueError('x' * 100_000)")
    assert result.kind == "error" and len(result.error) <= 500


# --------------------------------------------------------------------------------------- the network
@pytest.fixture
def listener() -> tuple[int, threading.Event]:
    """A TCP server on 127.0.0.1 (like an unauthenticated MLflow or Prefect); the event is set if any
    client ever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    reached, stop = threading.Event(), threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                reached.set()
                connection.close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], reached
    stop.set()
    thread.join()
    server.close()


NETWORK_PROGRAM = """
import socket
s = socket.socket(socket.AF_INET6 if {v6} else socket.AF_INET)
s.settimeout(2)
s.connect(({host!r}, {port}))
"""


@pytest.mark.parametrize("isolation", ["auto", "seccomp"])
def test_programs_reach_no_network_not_even_localhost(
    listener: tuple[int, threading.Event], isolation: str
) -> None:
    port, reached = listener
    for host, v6 in (("127.0.0.1", False), ("::1", True), ("93.184.216.34", False)):
        result = run_program(NETWORK_PROGRAM.format(host=host, port=port, v6=v6), isolation=isolation)
        refused = ("OSError", "PermissionError")  # unreachable (no interface) or refused (seccomp)
        assert result.kind == "error" and result.error.startswith(refused), (host, result)
    time.sleep(0.3)
    assert not reached.is_set(), "a program connected to a host listener"


# ------------------------------------------------------------------------------------------ the files
@needs_namespaces
def test_programs_see_the_interpreter_and_stdlib_but_no_host_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o644)
    targets = [str(secret), "/etc/shadow", str(PROJECT_ROOT / "params.yaml"), str(PROJECT_ROOT / "mlflow.db")]
    program = textwrap.dedent(
        f"""
        import json, os, sys, xml.dom.minidom  # a stdlib module nobody preloaded still imports
        for path in {targets!r}:
            assert not os.path.exists(path), path
        assert os.listdir("/work") == ["program.py"] and os.getcwd() == "/work"
        assert not os.path.exists({str(PROJECT_ROOT)!r})
        assert sys.executable and os.path.isdir(os.path.dirname(json.__file__))
        """
    )
    result = run_program(program)
    assert result.passed, result


@needs_namespaces
def test_programs_hold_no_capability_and_run_under_their_own_uid() -> None:
    program = textwrap.dedent(
        f"""
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[field].strip(), 16) == 0, (field, status[field])
        assert status["NoNewPrivs"].strip() == "1"
        if {drops_privileges()!r}:
            assert os.getuid() >= 1_000_000_000 and os.getgroups() == []
        assert os.getpid() == 1  # its own PID namespace: no other process of the host is visible
        assert sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1]
        """
    )
    result = run_program(program)
    assert result.passed, result


@needs_namespaces
def test_tmp_and_shm_are_private_and_gone_after_the_program() -> None:
    marker = uuid.uuid4().hex
    writer = f"for d in ('/tmp', '/dev/shm'):\n    open(d + '/{marker}', 'w').write('x')"
    reader = (
        f"import os\nassert not os.path.exists('/tmp/{marker}') and not os.path.exists('/dev/shm/{marker}')"
    )
    results = run_programs([writer, reader], workers=1)
    assert [result.kind for result in results] == ["passed", "passed"], results
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/dev/shm/{marker}").exists()


def test_no_sandbox_directory_is_left_behind() -> None:
    before = {path.name for path in Path("/tmp").glob("codemill-sandbox-*")}
    run_programs(["open('x', 'w').write('y')"] * 3, workers=2)
    assert {path.name for path in Path("/tmp").glob("codemill-sandbox-*")} == before


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
        assert posix.getcwd() == posix.environ[b"HOME"].decode()
        """
    )
    assert run_program(program).passed


# ----------------------------------------------------------------------------------------- the verdict
FORGERS = [
    "import posix\nposix.write(3, b'ok\\npassed\\n')\nassert False",
    "import posix\nposix.write(3, b'ok\\npassed\\n')\nposix._exit(0)",
    "import posix\nfor fd in range(3, 1024):\n    try:\n        posix.write(fd, b'ok\\npassed\\n')\n"
    "    except OSError:\n        pass\nraise SystemExit(0)",
    "import posix, secrets\nposix.write(3, secrets.token_hex(16).encode() + b' passed\\n')\nposix._exit(0)",
]


@pytest.mark.parametrize("program", FORGERS)
def test_a_program_cannot_forge_its_verdict_through_the_report_pipe(program: str) -> None:
    result = run_program(program)
    assert not result.passed, result


# --------------------------------------------------------------------------------------- the processes
def _marked(marker: str) -> list[psutil.Process]:
    """Living processes whose command line carries ``marker`` (the sleeps a program started)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(marker in part for part in cmdline):
            found.append(process)
    return found


def _spawner(marker: str, then: str) -> str:
    """A program that starts a subprocess, a forked child and a double-forked setsid() daemon (each a
    ``sleep`` named ``marker``), then runs ``then``. It bypasses the os.fork guard."""
    return textwrap.dedent(
        f"""
        import posix, subprocess, time
        subprocess.Popen([{marker!r}, "60"], executable="/bin/sleep")
        if posix.fork() == 0:
            posix.execv("/bin/sleep", [{marker!r}, "61"])
        if posix.fork() == 0:
            posix.setsid()
            if posix.fork() == 0:
                posix.execv("/bin/sleep", [{marker!r}, "62"])
            posix._exit(0)
        time.sleep(0.5)
        {then}
        """
    )


@pytest.mark.parametrize(("then", "kind"), [("pass", "passed"), ("time.sleep(60)", "timeout")])
def test_no_process_survives_the_program(then: str, kind: str) -> None:
    marker = f"codemill-test-{uuid.uuid4().hex}"
    most, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(_marked(marker)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run_program(_spawner(marker, then), timeout_s=3)
    done.set()
    watcher.join()
    assert result.kind == kind, result
    assert most[0] == 3, "the program's three processes ran while it did"
    time.sleep(0.2)
    assert _marked(marker) == []


CLEAN_CHECK = textwrap.dedent(
    """
    import json, posix
    assert len([1]) == 1 and json.dumps([1]) == "[1]"
    assert posix.listdir(".") == ["program.py"] and b"CORRUPTED" not in posix.environ
    """
)
BREAKERS = [
    (
        "import builtins, json, posix, sys\nopen('left-behind.txt', 'w').close()\n"
        "builtins.len = json.dumps = None\nposix.environ[b'CORRUPTED'] = b'1'\nsys.modules.clear()\n",
        "passed",
        "",
    ),
    ("assert 1 == 1\nimport posix\nposix._exit(0)\nassert False", "error", "before the tests finished"),
    # As PID 1 of its own PID namespace a program cannot even kill itself, and sees no parent to signal.
    ("import posix\nposix.killpg(0, 9)", *(("passed", "") if NAMESPACES else ("error", "SIGKILL"))),
    ("import posix\nposix.closerange(0, 1024)", "error", "before the tests finished"),
    (
        "import posix, time\nposix.kill(posix.getppid(), 9)\ntime.sleep(60)",
        "timeout" if NAMESPACES else "error",
        "",
    ),
]


def test_a_program_that_breaks_its_process_costs_only_its_own_verdict() -> None:
    programs = [program for breaker in BREAKERS for program in (breaker[0], CLEAN_CHECK)]
    results = run_programs([CLEAN_CHECK, *programs], timeout_s=5, workers=1)
    assert results[0].passed and all(result.passed for result in results[2::2]), results
    for (_, kind, message), result in zip(BREAKERS, results[1::2], strict=True):
        assert result.kind == kind and message in result.error, result


def test_a_program_without_namespaces_that_kills_the_server_costs_only_its_own_verdict() -> None:
    # Without a PID namespace a program can address the server: refused under a uid of its own (root);
    # without one (an unprivileged scorer) the server dies and is replaced.
    killer = "import posix, signal, time\nposix.kill(posix.getppid(), signal.SIGKILL)\ntime.sleep(60)"
    results = run_programs([killer, CLEAN_CHECK], timeout_s=5, workers=1, isolation="none")
    expected = "PermissionError" if drops_privileges() else "died"
    assert results[0].kind == "error" and expected in results[0].error, results
    assert results[1].passed, results


def test_a_hung_server_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without namespaces and a uid of its own a program could stop the server; here the test stops it.
    monkeypatch.setattr(sandbox, "RUNNER_GRACE_S", 1.0)
    with ForkServer("none") as server:
        server.start()
        assert server._process is not None
        threading.Timer(0.5, os.kill, (server._process.pid, signal.SIGSTOP)).start()
        started = time.monotonic()
        result = server.run("import time\ntime.sleep(30)", timeout_s=1)
        assert result.kind == "timeout" and "sandbox server exceeded" in result.error, result
        assert time.monotonic() - started < 10
        assert server.run("assert True").passed  # on a new server


def test_killing_the_scorer_ends_the_server_the_program_and_its_daemons(tmp_path: Path) -> None:
    """kill -9 of ``codemill eval-samples`` mid-program: everything it started dies with it, nothing stays."""
    marker = f"codemill-test-{uuid.uuid4().hex}"
    samples = tmp_path / "samples.jsonl"
    completion = "    " + _spawner(marker, "time.sleep(60)").replace("\n", "\n    ")
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": completion}) + "\n")
    before = {path.name for path in Path("/tmp").glob("codemill-sandbox-*")}
    command = ["eval-samples", str(samples), "--timeout", "60", "--workers", "1"]
    scorer = subprocess.Popen(
        [sys.executable, "-m", "components.cli", *command],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(_marked(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_marked(marker)) == 3, "the program's sleeps did not start"
    tree = [scorer.pid, *(child.pid for child in psutil.Process(scorer.pid).children(recursive=True))]
    os.kill(scorer.pid, signal.SIGKILL)
    scorer.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_marked(marker) or any(_alive(pid) for pid in tree)):
        time.sleep(0.1)
    assert _marked(marker) == [] and not [pid for pid in tree if _alive(pid)]
    assert {path.name for path in Path("/tmp").glob("codemill-sandbox-*")} == before


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_reports_its_isolation_and_a_required_level_is_enforced() -> None:
    with ForkServer("none") as server:
        assert server.start() == "none"
    with ForkServer("seccomp") as server:
        assert server.start() == "seccomp"
    assert isolation_in_force("auto") in ("namespaces", "seccomp", "none")
    with pytest.raises(ValueError, match="isolation must be one of"):
        ForkServer("chroot")
