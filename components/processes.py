"""Child processes that cannot outlive whoever started them: sessions, a guard, subreaping, recorded PIDs.

The one module that starts, signals and reaps process trees (the stage launcher, ``codemill serve``, the
services of ``codemill up``, the pipeline flow's stages and the sandbox's parent side all use it).

- :func:`tool_env`: the environment of a child running the project's tools (telemetry off, this
  interpreter's ``bin`` first on PATH).
- :func:`run_guarded`: start a command under a small *guard* process in a new session. The guard asks the
  kernel for SIGTERM when the thread that launched it dies (``PR_SET_PDEATHSIG``), so a SIGKILLed parent
  takes the tree with it; it is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so descendants that
  double-fork or call ``setsid()`` (training ranks, servers) are re-parented to it and ended with the
  command. On SIGTERM/SIGINT/SIGHUP, or when the command exits, it ends every remaining descendant
  (SIGTERM, then SIGKILL after a grace period). The launching side ends the guard on any exception
  (a SIGTERM of the launching process included) and SIGKILLs the group as a last sweep.
- :class:`ProcessRecord`: a PID with its start time. :func:`signal_recorded` never signals a PID whose
  start time differs from the record (a recycled PID after a reboot is somebody else's process).

Standard library plus psutil only: the guard runs this file as a script (``python -I``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Seconds a tree gets between SIGTERM and SIGKILL.
GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: Telemetry off by default (see docs/operations.md), and Prefect's temporary API given two minutes to
#: start (its default, 20 s, is too short for the first start of a fresh venv on 2 busy cores, which
#: migrates its database); the user's environment wins.
QUIET_ENV = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}

_live_guards: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process running the project's tools: ours, telemetry off unless set,
    ``extra`` on top, and this interpreter's ``bin`` first on PATH (``dvc.yaml`` runs ``python -m
    components.<stage>``; mlflow starts ``uvicorn`` by name), even when the venv is not activated."""
    env = {**QUIET_ENV, **os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def quiet_environment() -> None:
    """Turn telemetry off in this process's environment (unless the user set the variables)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def prctl(option: int, value: int) -> None:
    """``prctl(option, value)``; raises OSError on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when the thread that started it exits."""
    prctl(PR_SET_PDEATHSIG, sig)


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init (so it can end them)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


# ------------------------------------------------------------------------------------ recorded PIDs
@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: its PID and its start time (``psutil``'s ``create_time``)."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        """The record of the live process ``pid``."""
        return cls(pid, psutil.Process(pid).create_time())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        """A record from its JSON form (``pid``, ``create_time``); raises ValueError when malformed."""
        try:
            return cls(int(data["pid"]), float(data["create_time"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a process record: {data!r}") from exc

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    def process(self) -> psutil.Process | None:
        """The live process, if it is still the one recorded (same PID and start time, not a zombie)."""
        try:
            process = psutil.Process(self.pid)
            if process.create_time() != self.create_time or process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None

    def alive(self) -> bool:
        """Whether the recorded process still runs."""
        return self.process() is not None


def signal_recorded(record: ProcessRecord, sig: int) -> bool:
    """Send ``sig`` to the recorded process only if it is still that process; returns whether it was."""
    process = record.process()
    if process is None:
        return False
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)
        return True
    return False


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (zombies count as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ----------------------------------------------------------------------------------- groups and trees
def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to process group ``pgid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def end_processes(processes: Iterable[psutil.Process], grace_s: float = GRACE_S) -> list[psutil.Process]:
    """SIGTERM ``processes``, SIGKILL those still alive after ``grace_s``; returns those that survived."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


def end_descendants(grace_s: float = GRACE_S) -> None:
    """End every descendant of this process, repeating while orphans keep being re-parented to us."""
    me = psutil.Process()
    for _ in range(20):
        descendants = me.children(recursive=True)
        if not descendants:
            break
        end_processes(descendants, grace_s)
        grace_s = 1.0
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


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


def kill_sessions(session_ids: Iterable[int], uid: int | None = None) -> int:
    """SIGKILL every process in one of the sessions ``session_ids`` or with real uid ``uid``; returns how
    many. Repeats until a scan finds none (a process may fork while being swept)."""
    if uid == 0:
        raise ValueError("refusing to sweep uid 0")
    sessions = {str(session) for session in session_ids}
    killed = 0
    for _ in range(100):
        found = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit()
            and (
                _proc_field(pid, "sid") in sessions
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


# ------------------------------------------------------------------------------------------ the guard
class CommandFailed(RuntimeError):
    """A guarded command exited non-zero; the message ends with its last output lines."""

    def __init__(self, cmd: list[str], returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        lines = "".join(tail).rstrip("\n")
        shown = f"; last output lines:\n{lines}" if lines else ""
        super().__init__(f"`{' '.join(cmd)}` exited with code {returncode}{shown}")


def _guard_main(argv: list[str]) -> int:
    """The guard: ``processes.py LAUNCHER_PID -- CMD...`` (see the module docstring)."""
    launcher, command = int(argv[0]), argv[2:]
    die_with_parent(signal.SIGTERM)
    become_subreaper()
    if os.getppid() != launcher:  # the launcher died before the death signal was armed
        return 128 + signal.SIGTERM

    def stop(signum: int, _frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        end_descendants(GRACE_S)
        os._exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    child = subprocess.Popen(command)
    returncode = child.wait()
    end_descendants(GRACE_S)
    return 128 - returncode if returncode < 0 else returncode


def _stop_guard(guard: subprocess.Popen) -> None:
    """Ask the guard to end its tree; SIGKILL the whole group if it does not finish in time."""
    with contextlib.suppress(ProcessLookupError):
        guard.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(timeout=GRACE_S + 10)
    kill_group(guard.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(timeout=5)


def terminate_all() -> None:
    """End every guarded command this process started that is still running."""
    with _live_lock:
        guards = list(_live_guards)
    for guard in guards:
        _stop_guard(guard)


@contextlib.contextmanager
def _stop_signals_raise() -> Any:
    """In the main thread: SIGTERM and SIGHUP raise SystemExit (SIGINT already raises), so the ``except``
    of :func:`run_guarded` ends the tree; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_guarded(
    cmd: list[str],
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    tail_lines: int = 30,
    capture: bool = True,
) -> list[str]:
    """Run ``cmd`` under a guard (module docstring). Returns the last ``tail_lines`` output lines.

    ``capture``: stdout+stderr are read line by line (each passed to ``on_line``); otherwise the command
    writes to ours. Raises :class:`CommandFailed` on a non-zero exit. Whatever happens, no process of the
    command's tree is left when this returns or raises.
    """
    # -I: isolated, so the guard's own folder (components/, with a package named ``tokenize``) is not
    # put first on its sys.path.
    guard_cmd = [sys.executable, "-I", str(Path(__file__).resolve()), str(os.getpid()), "--", *cmd]
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with _stop_signals_raise():
        guard = subprocess.Popen(
            guard_cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True, text=True,
            errors="replace", bufsize=1, stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
        )  # fmt: skip
        with _live_lock:
            _live_guards.add(guard)
        try:
            if guard.stdout is not None:
                for line in guard.stdout:
                    tail.append(line)
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
            returncode = guard.wait()
        except BaseException:
            _stop_guard(guard)
            raise
        finally:
            kill_group(guard.pid)  # anything left in the group, whatever happened
            with _live_lock:
                _live_guards.discard(guard)
    if returncode != 0:
        raise CommandFailed(cmd, returncode, list(tail))
    return list(tail)


if __name__ == "__main__":
    raise SystemExit(_guard_main(sys.argv[1:]))
