"""``codemill serve`` process handling: own process group, signals forwarded, nothing left behind.

The end-to-end check (a real champion answering POST /invocations) is in tests/test_register_server.py,
which shares its MLflow tracking server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from components.register.serve import serve_command
from tests.conftest import PROJECT_ROOT


def _wrapper(shell: str) -> subprocess.Popen[bytes]:
    """A Python process running ``run_foreground(['bash', '-c', shell])`` (in its own main thread)."""
    command = ["bash", "-c", shell]
    code = f"import sys; from components.register.serve import run_foreground as r; sys.exit(r({command!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT)


def _wait_for_children(proc: subprocess.Popen[bytes], n: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children(recursive=True)
        if len(children) >= n:
            return children
        time.sleep(0.1)
    raise AssertionError(f"expected {n} descendants of {proc.pid}")


def _gone(processes: list[psutil.Process]) -> bool:
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(alive(p) for p in processes)


def test_serve_command_targets_the_champion() -> None:
    command = serve_command("tiny", 5123, "127.0.0.1")
    assert command[1:5] == ["-m", "mlflow", "models", "serve"]
    assert command[command.index("-m", 2) + 1] == "models:/codemill-tiny@champion"
    assert command[-6:] == ["--env-manager", "local", "-h", "127.0.0.1", "-p", "5123"]


def test_sigterm_is_forwarded_to_the_whole_group() -> None:
    proc = _wrapper("sleep 300 & sleep 300 & wait")
    children = _wait_for_children(proc, 4)  # the guard, bash + 2 sleeps
    groups = {os.getpgid(child.pid) for child in children}
    assert len(groups) == 1 and os.getpgid(proc.pid) not in groups  # one group of its own
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert _gone(children)


def test_leftover_processes_are_killed_when_the_server_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"
    proc = _wrapper(f"sleep 300 & echo $! > {pid_file}; exit 3")
    assert proc.wait(timeout=30) == 3
    orphan = int(pid_file.read_text())
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE


def test_sigkill_of_serve_ends_the_server_tree() -> None:
    proc = _wrapper("sleep 300 & sleep 300 & wait")
    children = _wait_for_children(proc, 4)  # the guard, bash + 2 sleeps
    proc.send_signal(signal.SIGKILL)  # no handler can run: the guard's death signal must do it
    proc.wait(timeout=20)
    deadline = time.monotonic() + 20
    while not _gone(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(children)
