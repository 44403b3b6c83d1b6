"""Run a command so that it cannot outlive whoever started it: its own session, a guard, a sweep.

``run_guarded(cmd)`` starts this file as a small *guard* process in a new session (so the command's
process group is its own), and the guard starts the command. The guard

- asks the kernel for SIGTERM when the thread that launched it dies (``PR_SET_PDEATHSIG``): a SIGKILLed
  flow run process takes its stages with it, which no signal handler in the flow could do;
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): descendants that double-fork or call ``setsid()``
  (training ranks, sandboxed programs) are re-parented to it instead of to init, so it can find them;
- on SIGTERM/SIGINT/SIGHUP, or when the command exits, ends every remaining descendant (SIGTERM, then
  SIGKILL after a grace period) and exits with the command's code.

The launcher kills the guard (and so the tree) on any exception, cancellation included, and SIGKILLs the
process group afterwards as a last sweep. ``terminate_all()`` ends every guard still running in this
process (a flow calls it when it is interrupted). The guard only needs the standard library and psutil.
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
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 10.0

_live_guards: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


class CommandFailed(RuntimeError):
    """A guarded command exited non-zero; the message ends with its last output lines."""

    def __init__(self, cmd: list[str], returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        lines = "".join(tail).rstrip("\n")
        super().__init__(f"`{' '.join(cmd)}` exited with code {returncode}; last output lines:\n{lines}")


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


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


def _end_descendants(grace_s: float) -> None:
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


def _guard_main(argv: list[str]) -> int:
    """The guard: ``process_group.py LAUNCHER_PID -- CMD...`` (see the module docstring)."""
    launcher, command = int(argv[0]), argv[2:]
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != launcher:  # the launcher died before the death signal was armed
        return 128 + signal.SIGTERM

    def stop(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _end_descendants(GRACE_S)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    child = subprocess.Popen(command)
    returncode = child.wait()
    _end_descendants(GRACE_S)
    return returncode


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to process group ``pgid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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


def run_guarded(
    cmd: list[str],
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    tail_lines: int = 30,
) -> list[str]:
    """Run ``cmd`` under a guard (module docstring), streaming stdout+stderr lines to ``on_line``.

    Returns the last ``tail_lines`` lines; raises ``CommandFailed`` (with them) on a non-zero exit.
    Whatever happens, no process of the command's tree is left when this returns or raises.
    """
    guard_cmd = [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), "--", *cmd]
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    guard = subprocess.Popen(
        guard_cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        errors="replace",
        bufsize=1,
    )
    with _live_lock:
        _live_guards.add(guard)
    try:
        assert guard.stdout is not None
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


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); returns those still alive."""
    deadline = time.monotonic() + timeout_s
    remaining = list(pids)
    while remaining:
        remaining = [pid for pid in remaining if _alive(pid)]
        if not remaining or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return remaining


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    raise SystemExit(_guard_main(sys.argv[1:]))
