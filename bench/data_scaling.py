"""Data-stage throughput with the local executor, 1 and 2 Dask workers on this machine, in one run.

Runs ingest -> curate -> dedup -> clean on the project's params (the Python standard library by default)
once per executor, each in a fresh temporary directory with a throwaway MLflow store, as `dvc repro`
runs them. The Dask runs start a LocalCluster (worker processes of one thread each) and pass its address
as ``executor.address``; cluster start-up is not counted. MB/s = stage input bytes / stage seconds, from
each stage's own report. It also checks that every executor wrote byte-identical shards.

    python bench/data_scaling.py [--repeats N] [--shard-bytes B] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "bench")]

from benchdoc import publish  # noqa: E402

from components.executor import map_shards  # noqa: E402
from components.params import ExecutorConfig, load_params, yaml_text  # noqa: E402
from components.report import StageReport  # noqa: E402
from components.shards import shard_name  # noqa: E402
from components.stage_runner import run_stage  # noqa: E402

SECTION = "## Data-stage scaling"
STAGES = ["ingest", "curate", "dedup", "clean"]


@dataclass
class ExecutorRun:
    """One executor's pass over the data stages: reports and the sha256 of every output shard."""

    label: str
    reports: list[StageReport]
    hashes: dict[str, str]

    @property
    def seconds(self) -> float:
        """All four stages."""
        return sum(report.seconds for report in self.reports)


@contextmanager
def dask_cluster(workers: int | None) -> Iterator[str | None]:
    """The address of a LocalCluster of ``workers`` one-thread processes; ``None``: the local executor."""
    if workers is None:
        yield None
        return
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def output_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under the stages' outputs."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for stage in STAGES
        for path in sorted((root / "data" / stage).iterdir())
    }


def run_data_stages(label: str, overrides: dict[str, object]) -> ExecutorRun:
    """Run the four data stages in a temporary directory with ``overrides`` applied to params.yaml."""
    params = load_params(
        PROJECT_ROOT / "params.yaml", overrides={k: yaml_text(v) for k, v in overrides.items()}
    )
    reports = []
    previous_cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="codemill-scaling-") as work:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        os.chdir(work)
        try:
            previous = None
            for stage in STAGES:
                spec = importlib.import_module(f"components.{stage}").STAGE
                io = spec.resolve([previous] if previous else [], f"data/{stage}")
                reports.append(run_stage(spec, params, io, f"reports/{stage}.json"))
                previous = io.output
            hashes = output_hashes(Path(work))
        finally:
            os.chdir(previous_cwd)
    return ExecutorRun(label, reports, hashes)


def pool_start_seconds(workers: int = 2) -> float:
    """What one ``map_shards`` call costs the local executor before any work: starting its spawned pool."""
    start = time.perf_counter()
    map_shards(shard_name, list(range(workers)), ExecutorConfig(workers=workers))
    return time.perf_counter() - start


def best_of(runs: list[ExecutorRun]) -> ExecutorRun:
    """Per stage, the fastest of the repeats (reports of the same stage are otherwise identical)."""
    by_stage = zip(*(run.reports for run in runs), strict=True)
    reports = [min(stage_runs, key=lambda report: report.seconds) for stage_runs in by_stage]
    return ExecutorRun(runs[0].label, reports, runs[0].hashes)


def markdown(
    runs: list[ExecutorRun], args: argparse.Namespace, load: tuple[float, float], pool_start: float
) -> str:
    """The benchmark section for docs/benchmarks.md."""
    local, one, two = runs
    identical = all(run.hashes == local.hashes for run in runs)
    mb_in = [report.bytes_in / 1e6 for report in local.reports]
    lines = [
        SECTION,
        "",
        f"Command (from the project root): `python bench/data_scaling.py --repeats {args.repeats}"
        + (f" --shard-bytes {args.shard_bytes}" if args.shard_bytes else "")
        + "`",
        "",
        f"Machine: {os.cpu_count()} cores shared with other jobs (load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end; executors alternate between passes), "
        f"{platform.machine()}, Python {platform.python_version()}. Corpus: the default `params.yaml` "
        f"sources (the Python standard library), {local.reports[0].files_out:,} files in "
        f"{len(local.hashes) // len(STAGES)} shards per stage. Executors: `{local.label}`; `{one.label}` and "
        f"`{two.label}`: a Dask LocalCluster of one-thread worker processes, its address as "
        "`executor.address` (cluster start-up not counted). Each stage as under `dvc repro`; MB/s = stage "
        f"input bytes / stage seconds from its report, best of {args.repeats}.",
        "",
        f"| stage | MB in | {local.label} MB/s | {one.label} MB/s | {two.label} MB/s | 2 / 1 workers |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for index, stage in enumerate(STAGES):
        rates = [run.reports[index].mb_per_s for run in runs]
        lines.append(
            f"| {stage} | {mb_in[index]:.1f} | {rates[0]:.2f} | {rates[1]:.2f} | {rates[2]:.2f} "
            f"| {rates[2] / rates[1]:.2f}x |"
        )
    totals = [sum(mb_in) / run.seconds for run in runs]
    lines.append(
        f"| all four ({', '.join(f'{run.seconds:.1f}' for run in runs)} s) | {sum(mb_in):.1f} "
        f"| {totals[0]:.2f} | {totals[1]:.2f} | {totals[2]:.2f} | **{totals[2] / totals[1]:.2f}x** |"
    )
    lines += [
        "",
        f"Scaling ratio, 2 Dask workers over 1: **{totals[2] / totals[1]:.2f}x** for the four stages "
        f"({two.label} vs {local.label}: {totals[2] / totals[0]:.2f}x). Outputs of all three executors "
        f"byte-identical: **{'yes' if identical else 'NO'}**.",
        "",
        f"Where the time goes: ingest's default source is one read task (its {local.reports[0].files_in:,} "
        "files fit in one task of 4,096), so it cannot spread; locally it runs in the stage process, on Dask "
        f"its {mb_in[1]:.0f} MB of documents come back from one worker as one result. curate and clean are "
        "CPU-bound per shard and scale with the workers as far as the 2 shared cores allow. dedup is faster "
        "on Dask than on the local pool, even with one worker: the local executor starts a fresh spawned "
        f"pool for every per-shard map ({pool_start:.2f} s each on this machine; dedup has two or three), "
        "while Dask workers stay up between maps and stages.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the three executors and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="passes per executor (best per stage)")
    parser.add_argument("--shard-bytes", type=int, default=None, help="data.shard_bytes (default: params)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    load = os.getloadavg()
    base: dict[str, object] = {} if args.shard_bytes is None else {"data.shard_bytes": args.shard_bytes}
    executors = [("local, 2 processes", None), ("Dask, 1 worker", 1), ("Dask, 2 workers", 2)]
    passes: dict[str, list[ExecutorRun]] = {label: [] for label, _ in executors}
    for repeat in range(args.repeats):  # alternate executors, so changes in machine load hit all of them
        for label, workers in executors:
            with dask_cluster(workers) as address:
                overrides = {**base, "executor.workers": 2, "executor.address": address}
                passes[label].append(run_data_stages(label, overrides))
            print(f"pass {repeat + 1}, {label}: {passes[label][-1].seconds:.1f} s", flush=True)
    runs = [best_of(passes[label]) for label, _ in executors]
    section = markdown(runs, args, (load[0], os.getloadavg()[0]), min(pool_start_seconds() for _ in range(3)))
    publish(section, write=not args.no_write)


if __name__ == "__main__":
    main()
