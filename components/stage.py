"""Run one stage: parse its command line, load params, track it in MLflow, write its report.

Every stage module exposes ``run(params, io) -> StageReport``; its ``__main__`` is
``raise SystemExit(stage_main("<name>", run))``. This module holds all the shared bookkeeping.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from components.config import DEFAULT_PARAMS, Params, ParamsError, load_params
from components.errors import StageError
from components.report import StageReport


@dataclass(frozen=True)
class StageIO:
    """Where a stage reads and writes: input directories and one output path (``None`` if it has none)."""

    inputs: list[str]
    output: str | None


StageFn = Callable[[Params, StageIO], StageReport]


def run_stage(name: str, fn: StageFn, params: Params, io: StageIO, report_path: str) -> StageReport:
    """Run ``fn`` inside the stage's MLflow run, then write and log its report."""
    from components import tracking

    with tracking.stage_run(name, params):
        start = time.perf_counter()
        report = fn(params, io)
        report.seconds = time.perf_counter() - start
        report.write(report_path)
        outputs = [io.output] if io.output else []
        tracking.log_stage_result(report, report_path, io.inputs, outputs)
    return report


def stage_main(name: str, fn: StageFn, argv: list[str] | None = None) -> int:
    """Command-line entry of a stage (what ``dvc.yaml`` calls). Returns the exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m components.{name}", description=fn.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    parser.add_argument("--input", action="append", default=[], help="input directory (repeatable)")
    parser.add_argument("--output", default=None, help="output directory")
    parser.add_argument("--report", default=f"reports/{name}.json", help="report path (DVC metrics)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        report = run_stage(name, fn, params, StageIO(args.input, args.output), args.report)
    except (ParamsError, StageError, FileNotFoundError) as exc:
        print(f"codemill {name}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"codemill {name}: {report.files_in} files in, {report.files_out} out, "
        f"{report.bytes_in / 1e6:.1f} MB in, {report.seconds:.1f}s ({report.mb_per_s:.2f} MB/s)"
    )
    return 0
