"""Orchestration overhead: one stage run by the Prefect pipeline flow and by bare ``dvc repro``, in one run.

Both run the same DVC command on the CPU profile (``params.yaml``) in a scratch git copy of the project:
bare = ``dvc repro --single-item --force STAGE`` as a subprocess; flow = ``pipeline(targets=[STAGE],
single_item=True, force=True)`` called in this process, which adds the Prefect flow and task runs (on
Prefect's temporary local API), the MLflow parent run, reading the DAG from DVC, the stage guard, the
MLflow look-ups of the stage table and the two artifacts. The stages the measured one needs are built
once beforehand (not timed). Runs alternate (bare, flow, flow, bare, ...); the table shows every run
and the overhead of the medians. The first flow of a process also starts Prefect's temporary API: that
one-off cost is measured separately (a flow on the then cached stage) and is absent with ``codemill up``.

    python bench/orchestration_overhead.py [--stage tokenize] [--repeats 2] [--workdir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402

SECTION = "## Orchestration overhead"


def project_copy(workdir: Path) -> Path:
    """A git copy of the project (tracked and untracked, not ignored files) in ``workdir/project``."""
    root = workdir / "project"
    if (root / ".git").exists():
        return root
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for relative in listed:
        if not relative.startswith(("tests/", "bench/", "docs/")) and (PROJECT_ROOT / relative).is_file():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, root / relative)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, check=True, env={**os.environ, **GIT_IDENTITY})
    return root


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Wall seconds of ``fn(*args, **kwargs)``."""
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def bare(root: Path, stage: str) -> None:
    """The stage run by plain DVC."""
    subprocess.run(
        ["dvc", "repro", "--single-item", "--force", stage], cwd=root, check=True, stdout=subprocess.DEVNULL
    )


def main(argv: list[str] | None = None) -> None:
    """Time the stage bare and under the flow (alternating); print and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="tokenize")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--workdir", type=Path, help="reuse this scratch directory (default: a new one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="codemill-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for key in ("MLFLOW_TRACKING_URI", "CODEMILL_PARENT_RUN_ID", "PREFECT_API_URL"):
        os.environ.pop(key, None)
    os.environ.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PREFECT_HOME=str(workdir / "prefect-home"),
        PREFECT_LOGGING_LEVEL="WARNING",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    root = project_copy(workdir)
    os.chdir(root)
    print(f"preparing {args.stage} and what it needs in {root} ...", flush=True)
    subprocess.run(["dvc", "repro", args.stage], check=True, stdout=subprocess.DEVNULL)

    import flows.pipeline

    # Time the DVC command inside each flow run too: flow minus it is the orchestration cost of that very
    # run, which the machine's load (shared cores) disturbs far less than two separate runs of the stage.
    inner: list[float] = []
    run_guarded = flows.pipeline.run_guarded

    def timed_run_guarded(*args: object, **kwargs: object) -> list[str]:
        started = time.perf_counter()
        try:
            return run_guarded(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - started)

    flows.pipeline.run_guarded = timed_run_guarded

    def flow(force: bool = True) -> None:
        asyncio.run(flows.pipeline.pipeline(targets=[args.stage], single_item=True, force=force))

    def dvc_alone() -> None:
        bare(root, args.stage)

    first_flow_s = timed(flow, force=False)  # the stage is cached: mostly starting Prefect's temporary API
    load = os.getloadavg()[0]
    runs: dict[str, list[float]] = {"bare": [], "flow": []}
    inner.clear()
    for round_ in range(args.repeats):
        order = [("bare", dvc_alone), ("flow", flow)]
        for name, fn in order if round_ % 2 == 0 else reversed(order):
            seconds = timed(fn)
            runs[name].append(seconds)
            print(f"{name}: {seconds:.2f} s", flush=True)
    extra = [flow_s - dvc_s for flow_s, dvc_s in zip(runs["flow"], inner, strict=True)]
    bare_s, flow_s = statistics.median(runs["bare"]), statistics.median(runs["flow"])
    extra_s = statistics.median(extra)
    side_by_side, within = (flow_s - bare_s) / bare_s, extra_s / bare_s
    fastest_s = min(runs["bare"] + inner)  # the stage itself, bare or inside the flow
    worst = extra_s / fastest_s
    versions = ", ".join(f"{p} {version(p)}" for p in ("prefect", "dvc", "mlflow"))

    def row(title: str, values: list[float]) -> str:
        cells = " | ".join(f"{v:.2f}" for v in values)
        return f"| {title} | {cells} | {statistics.median(values):.2f} |"

    section = "\n".join(
        [
            SECTION,
            "",
            f"Command (from the project root): `python bench/orchestration_overhead.py --stage {args.stage} "
            f"--repeats {args.repeats}`",
            "",
            f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {versions}; load average "
            f"{load:.1f} at the start (other jobs share the cores). Stage `{args.stage}` on the CPU profile "
            "(`params.yaml`), forced, in a scratch git copy of the project with its upstream stages built. "
            "bare = `dvc repro --single-item --force STAGE`; flow = the pipeline flow with "
            "`targets=[STAGE], single_item=True, force=True` on Prefect's temporary local API (already "
            "started): the same DVC command in a guarded process group under an MLflow parent run, then "
            "the MLflow look-ups of the stage table and the two artifacts. Runs alternate; wall seconds. "
            "The DVC command inside each flow run is timed too, so flow minus it is that run's own "
            "orchestration cost. (The flow is an async flow because Prefect's sync engine ends every flow "
            "run by joining its heartbeat thread, which sleeps in 1 s steps: about 0.65 s more per run.)",
            "",
            "| run | " + " | ".join(f"#{i + 1}" for i in range(args.repeats)) + " | median |",
            "| --- | " + " | ".join("---:" for _ in range(args.repeats)) + " | ---: |",
            row("bare `dvc repro`", runs["bare"]),
            row("Prefect flow", runs["flow"]),
            row("the DVC command inside the flow", inner),
            row("flow minus its DVC command", extra),
            "",
            f"Overhead of the flow: **{extra_s:.2f} s per run** (median of flow minus its own DVC command) "
            f"= {within:.1%} of the bare run's median; the cost is per run, not per second of work, so "
            f"against the fastest run of the stage here ({fastest_s:.2f} s) it is **{worst:.1%}**: target "
            f"< 5% {'met' if worst < 0.05 else 'not met'}. Side by side (median flow vs median bare, "
            f"noisier under load): {side_by_side:+.1%}.",
            f"One-off, not in the table: a process's first flow (stage cached) took {first_flow_s:.1f} s, "
            "most of it starting Prefect's temporary API; `codemill up` runs a server instead.",
            "",
        ]
    )
    publish(section, write=not args.no_write)


if __name__ == "__main__":
    main()
