"""The languages the sandbox runs: one row each (file name, compile and run commands, success rule).

Adding a language is adding a row to :data:`LANGUAGES`. Commands name a tool by its name on ``PATH``
(``{file}`` is the program's file name); :func:`toolchain` finds the real binaries on this machine
(following ``rustup``-style proxies to the toolchain they run) and the directories the sandbox must show
read-only for them. A language whose tools are missing is *skipped*, never scored as 0.

The success rule is MultiPL-E's: the program (prompt + completion + tests) passes when it exits with
status 0. A failed compile step, or a run whose stderr matches ``syntax_pattern``, is ``syntax``; a
non-zero exit whose stderr matches ``failed_pattern`` (the language's failed-assertion message) is
``failed`` (a wrong answer), any other non-zero exit or signal is ``error`` (a crash);
``failed_pattern = None`` makes every non-zero exit ``failed`` (shell tests signal a wrong answer by
their exit status only) unless stderr matches ``crash_pattern``. Python runs in the sandbox's own preloaded
interpreter (its harness tells a failed assertion from a crash), the fast path for HumanEval.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

#: Directories the sandbox shows anyway (system directories); toolchains elsewhere are bound explicitly.
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")
#: JVM flags that fit the JVM in the sandbox's address-space limit and start it quickly.
JVM_FLAGS = (
    "-Xmx256m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CompressedClassSpaceSize=64m",
    "-XX:ReservedCodeCacheSize=32m", "-XX:MaxMetaspaceSize=128m", "-XX:-UsePerfData",
)  # fmt: skip
#: Output that means the program ran out of memory, in any language.
MEMORY_PATTERN = (
    r"MemoryError|std::bad_alloc|OutOfMemoryError|memory allocation of \d+ bytes failed|heap out of memory"
)


@dataclass(frozen=True)
class Language:
    """One row of the language table."""

    #: Our name (``evaluate`` reports and MultiPL-E's ``language`` field map to it, see ``codes``).
    name: str
    #: Other names of the language (MultiPL-E's codes: ``py``, ``js``, ``cpp``, ``rs``, ``java``, ``sh``).
    codes: tuple[str, ...]
    #: The program's file name in its working directory.
    file_name: str
    #: Command that runs the program (``()`` for Python: the sandbox's own interpreter).
    run: tuple[str, ...]
    #: Command that compiles it first, if any.
    compile: tuple[str, ...] = ()
    #: Regex of the stderr of a failed assertion (wrong answer); None: every non-zero exit is one.
    failed_pattern: str | None = None
    #: Regex (multi-line) of the stderr of an interpreter that could not parse the program.
    syntax_pattern: str | None = None
    #: Regex of the stderr of a crash, where ``failed_pattern`` is None (a shell's missing command).
    crash_pattern: str | None = None
    #: Address space the toolchain needs at least (MiB; a JVM reserves far more than it uses).
    min_memory_mb: int = 0
    #: Wall-clock limit of the compile step (seconds), apart from the run's limit.
    compile_timeout_s: float = 30.0
    #: Extra host paths (globs) the tools read, shown read-only in the sandbox.
    binds: tuple[str, ...] = ()

    @property
    def in_process(self) -> bool:
        """Runs in the sandbox's preloaded Python interpreter (no command)."""
        return not self.run

    @property
    def tools(self) -> tuple[str, ...]:
        """The tool names its commands start with."""
        return tuple(dict.fromkeys(command[0] for command in (self.compile, self.run) if command))


LANGUAGES: tuple[Language, ...] = (
    Language("python", ("py", "python3"), "program.py", run=()),
    Language(
        "javascript", ("js", "node"), "program.js", run=("node", "{file}"),
        failed_pattern="AssertionError", syntax_pattern=r"^SyntaxError: ",
    ),
    Language(
        "cpp", ("cpp", "c++"), "program.cpp",
        compile=("g++", "-std=c++17", "-o", "program", "{file}"), run=("./program",),
        failed_pattern=r"Assertion .* failed",
    ),
    Language(
        "rust", ("rs",), "program.rs",
        compile=("rustc", "--edition", "2021", "-o", "program", "{file}"), run=("./program",),
        failed_pattern=r"assertion .*failed|assertion failed", binds=("/etc/alternatives",),
    ),
    Language(
        "java", ("java",), "Problem.java",
        compile=("javac", *(f"-J{flag}" for flag in JVM_FLAGS), "-encoding", "UTF8", "-d", ".", "{file}"),
        run=("java", "-ea", *JVM_FLAGS, "-cp", ".", "Problem"),
        failed_pattern=r"java\.lang\.AssertionError", min_memory_mb=2048, binds=("/etc/java-*",),
    ),
    Language(
        "shell", ("sh", "bash"), "program.sh", run=("bash", "{file}"), syntax_pattern=r"syntax error",
        crash_pattern=r"command not found|unbound variable|bad substitution",
    ),
)  # fmt: skip
BY_NAME: dict[str, Language] = {code: row for row in LANGUAGES for code in (row.name, *row.codes)}


def language(name: str) -> Language:
    """The row of ``name`` (our name or one of its codes); ValueError names the known ones."""
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown language {name!r}; known: {sorted(BY_NAME)}") from None


@dataclass(frozen=True)
class Toolchain:
    """Where a language's tools are on this machine: real binary per tool name, and paths to bind."""

    binaries: dict[str, str]
    binds: tuple[str, ...]

    def command(self, template: Sequence[str], file_name: str) -> list[str]:
        """``template`` with its tool replaced by the real binary and ``{file}`` by ``file_name``."""
        tool, *args = template
        return [self.binaries.get(tool, tool), *(arg.replace("{file}", file_name) for arg in args)]


def _real_binary(tool: str) -> str | None:
    """The binary ``tool`` runs: followed through symlinks, and through a rustup proxy to its toolchain."""
    found = shutil.which(tool)
    if found is None:
        return None
    real = os.path.realpath(found)
    if os.path.basename(real) == "rustup":  # a proxy: ask it which toolchain it runs
        try:
            sysroot = subprocess.run(
                [found, "--print", "sysroot"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        real = os.path.join(sysroot, "bin", tool)
    return real if os.access(real, os.X_OK) else None


def _bind_root(binary: str) -> str | None:
    """The directory to show for a binary outside the system directories (its ``bin``'s parent)."""
    if binary.startswith(SYSTEM_PREFIXES):
        return None
    return os.path.dirname(os.path.dirname(binary))


@functools.cache
def toolchain(name: str) -> Toolchain | None:
    """The tools of language ``name`` on this machine, or None when one is missing (the language is
    then skipped)."""
    row = language(name)
    binaries: dict[str, str] = {}
    binds: list[str] = []
    for tool in row.tools:
        if tool.startswith("./"):
            continue  # the compiled program itself
        real = _real_binary(tool)
        if real is None:
            return None
        binaries[tool] = real
        if (root := _bind_root(real)) is not None:
            binds.append(root)
    for pattern in row.binds:
        binds += sorted(glob.glob(pattern))
    return Toolchain(binaries, tuple(dict.fromkeys(binds)))


def missing_tools(name: str) -> str:
    """Why language ``name`` is skipped here (its tools not found), or '' when it can run."""
    if toolchain(name) is not None:
        return ""
    row = language(name)
    return "toolchain not found: " + ", ".join(t for t in row.tools if not t.startswith("./"))


def _others_can_run(binary: str) -> bool:
    """Whether a user without capabilities can reach and run ``binary`` (every parent traversable)."""
    path = os.path.dirname(binary)
    while path != "/":
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        path = os.path.dirname(path)
    return bool(os.stat(binary).st_mode & stat.S_IXOTH)


def unreachable_tools(name: str) -> str:
    """Why language ``name`` cannot run under a uid of its own *without* the sandbox's mount namespace
    (a tool under a directory only its owner may enter, such as ``/root``), or '' when it can."""
    found = toolchain(name)
    binaries = found.binaries if found else {}
    blocked = [tool for tool, binary in binaries.items() if not _others_can_run(binary)]
    if not blocked:
        return ""
    return (
        f"{', '.join(blocked)} lies under a directory the sandbox's uid cannot enter "
        "(isolation 'namespaces' shows it)"
    )


def sandbox_binds() -> tuple[str, ...]:
    """Every path the sandbox must show read-only for the languages available here."""
    binds: list[str] = []
    for row in LANGUAGES:
        found = toolchain(row.name)
        if found is not None:
            binds += found.binds
    return tuple(dict.fromkeys(binds))


def steps(name: str, timeout_s: float) -> list[dict]:
    """The sandbox steps (compile, then run) of a program in language ``name``, real binaries resolved."""
    row, found = language(name), toolchain(name)
    if found is None:
        raise ValueError(f"language {name!r}: {missing_tools(name)}")
    planned = []
    if row.compile:
        argv = found.command(row.compile, row.file_name)
        planned.append({"phase": "compile", "argv": argv, "timeout_s": row.compile_timeout_s})
    planned.append({"phase": "run", "argv": found.command(row.run, row.file_name), "timeout_s": timeout_s})
    return planned
