"""Execution sandbox: each untrusted program runs in its own process, session, temp dir, uid and limits.

One program = one ``python -I -S -B components/evaluate/runner.py`` process started with
``start_new_session=True``, cwd = a fresh temporary directory (also HOME and TMPDIR), a minimal
environment and stdin on /dev/null. The runner forks the program process, which sets RLIMIT_AS (memory),
RLIMIT_CPU, RLIMIT_CORE = 0 (no core dumps), RLIMIT_FSIZE, and, when the scorer runs as root (tests and
CI do), drops to a uid of its own with no groups and no_new_privs, so it cannot write to the project
tree or signal any other process. The runner is a child subreaper: after the wall-clock limit (or the
program's end) it SIGKILLs every remaining descendant, including double-forked ``setsid()`` daemons,
and reaps them. This module then kills the whole process group with ``os.killpg`` in all cases and, if
the runner itself did not finish, sweeps /proc for the program's uid (root) or session. What is and
is not covered: the docstring of ``run_program``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from components.evaluate.runner import program_uid

RUNNER = Path(__file__).with_name("runner.py")
#: Outcomes of a program.
KINDS = ("passed", "failed", "error", "timeout", "memory", "syntax")
#: Extra seconds the runner gets beyond the program's limit (start-up, cleanup) before it is killed.
RUNNER_GRACE_S = 10.0
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


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


def _proc_field(pid: str, name: str) -> str | None:
    """Session id (``name="sid"``) or real uid (``name="uid"``) of a process, from /proc."""
    try:
        if name == "sid":
            with open(f"/proc/{pid}/stat") as file:
                return file.read().rsplit(")", 1)[1].split()[3]
        with open(f"/proc/{pid}/status") as file:
            return next(line.split()[1] for line in file if line.startswith("Uid:"))
    except (FileNotFoundError, ProcessLookupError, IndexError, StopIteration):
        return None


def sweep_processes(session_id: int, uid: int | None) -> int:
    """SIGKILL every process in session ``session_id`` or with real uid ``uid``; returns how many.

    The fallback for a runner that did not finish its own cleanup. Repeats until a scan finds none.
    """
    if uid == 0:
        raise ValueError("refusing to sweep uid 0")
    killed = 0
    for _ in range(100):
        found = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit()
            and (
                _proc_field(pid, "sid") == str(session_id)
                or (uid is not None and _proc_field(pid, "uid") == str(uid))
            )
        ]
        if not found:
            break
        for pid in found:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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


def run_program(program: str, timeout_s: float = 3.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run one Python program in the sandbox and classify its outcome.

    Covered: the program's wall-clock time (``timeout_s``, from its start), its address space
    (``memory_mb``), CPU time, core dumps, file size, its cwd/HOME/TMPDIR (a fresh temp dir, deleted
    afterwards), its environment (PATH/LANG only: no secrets or proxies), stdin (/dev/null), every
    process it starts (killed, setsid() daemons included). As root, it also cannot write anywhere its
    own uid cannot (project tree included), signal other processes, or gain privileges via setuid
    binaries. Not covered: reads (the program keeps CAP_DAC_READ_SEARCH to load the interpreter, which
    lives under /root here), writes to world-writable places (/tmp, /dev/shm) as its own uid, the
    network. Without root there is no uid of its own: isolation is the temp cwd, the guard and the
    process cleanup, and a daemon that kills the runner first can survive the session sweep.
    """
    workdir = tempfile.mkdtemp(prefix="codemill-sandbox-")
    try:
        program_path = os.path.join(workdir, "program.py")
        with open(program_path, "w", encoding="utf-8") as file:
            file.write(program)
        drop = drops_privileges()
        command = [sys.executable, "-I", "-S", "-B", str(RUNNER), program_path, repr(float(timeout_s))]
        command += [str(memory_mb * 2**20), "1" if drop else "0"]
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=_minimal_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s + RUNNER_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            sweep_processes(process.pid, program_uid(process.pid) if drop else None)
            process.kill()
            process.communicate()
            return ExecutionResult(
                "timeout", f"sandbox runner exceeded {timeout_s + RUNNER_GRACE_S:g} s", 0.0
            )
        finally:
            _kill_group(process.pid)
        kind, _, rest = stdout.decode("utf-8", "replace").partition("\n")
        seconds, _, message = rest.partition("\n")
        if process.returncode != 0 or kind not in KINDS:
            detail = message if kind == "setup" else stderr.decode("utf-8", "replace")[-2000:]
            raise SandboxError(f"sandbox runner failed (exit {process.returncode}, {kind!r}): {detail}")
        return ExecutionResult(kind, message, float(seconds))
    finally:
        _remove_tree(workdir)


def run_programs(
    programs: Sequence[str], timeout_s: float = 3.0, memory_mb: int = 1024, workers: int = 2
) -> list[ExecutionResult]:
    """Run many programs, ``workers`` at a time (each in its own sandbox process); results in input order."""
    if workers <= 1:
        return [run_program(program, timeout_s, memory_mb) for program in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, timeout_s, memory_mb), programs))
