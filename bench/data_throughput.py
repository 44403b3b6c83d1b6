"""Data-stage throughput on the default corpus, then near-dup detection against datasketch, in one run.

Runs ingest -> curate -> dedup -> clean -> validate with the project's params (the Python standard
library by default) exactly as `dvc repro` runs them, tracked in a throwaway MLflow store, and reports
MB/s per stage from each stage's own report. Then it runs bench/dedup_vs_datasketch.py (same shingles,
permutations, threshold and bands x rows for both). Both tables go to docs/benchmarks.md.

    python bench/data_throughput.py [--workers N] [--no-write] [-- ARGS FOR dedup_vs_datasketch]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench")]

import dedup_vs_datasketch  # noqa: E402
from benchdoc import publish  # noqa: E402

from components.params import load_params  # noqa: E402
from components.report import StageReport  # noqa: E402
from components.stage_runner import run_stage  # noqa: E402

STAGES = ["ingest", "curate", "dedup", "clean", "validate"]


def run_data_stages(workers: int) -> list[StageReport]:
    """Run the five data stages in a temporary directory; return their reports."""
    import importlib

    params = load_params(PROJECT_ROOT / "params.yaml", overrides={"executor.workers": str(workers)})
    reports = []
    with tempfile.TemporaryDirectory(prefix="codemill-bench-") as work:
        shutil.copytree(PROJECT_ROOT / "gx", Path(work) / "gx", ignore=shutil.ignore_patterns("uncommitted"))
        previous_cwd = Path.cwd()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        os.chdir(work)
        try:
            previous = None
            for stage in STAGES:
                output = "reports/data_docs" if stage == "validate" else f"data/{stage}"
                spec = importlib.import_module(f"components.{stage}").STAGE
                io = spec.resolve([previous] if previous else [], output)
                reports.append(run_stage(spec, params, io, f"reports/{stage}.json"))
                previous = output
        finally:
            os.chdir(previous_cwd)
    return reports


def markdown(reports: list[StageReport], workers: int) -> str:
    """The benchmark section for docs/benchmarks.md."""
    lines = [
        "## Data stage throughput",
        "",
        f"Command (from the project root): `python bench/data_throughput.py --workers {workers}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}; corpus: the default `params.yaml` sources (the Python stdlib). "
        "Each stage runs as under `dvc repro` (MLflow tracking included); MB/s = stage input bytes / stage "
        "seconds, from the stage's own report.",
        "",
        "| stage | files in | files out | MB in | MB out | seconds | MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        lines.append(
            f"| {r.stage} | {r.files_in:,} | {r.files_out:,} | {r.bytes_in / 1e6:.1f} "
            f"| {r.bytes_out / 1e6:.1f} | {r.seconds:.2f} | {r.mb_per_s:.2f} |"
        )
    total = sum(r.seconds for r in reports)
    lines += ["", f"All five stages: {total:.1f} s for {reports[0].bytes_out / 1e6:.1f} MB ingested.", ""]
    return "\n".join(lines)


def main() -> None:
    """Run the stage benchmark, then the datasketch comparison, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="executor.workers for the stages")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("dedup_args", nargs="*", help="arguments for bench/dedup_vs_datasketch.py")
    args = parser.parse_args()

    section = markdown(run_data_stages(args.workers), args.workers)
    publish(section, write=not args.no_write)
    dedup_vs_datasketch.main(args.dedup_args + (["--no-write"] if args.no_write else []))


if __name__ == "__main__":
    main()
