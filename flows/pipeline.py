"""The pipeline as a Prefect flow: one task per ``dvc.yaml`` stage, run through DVC, under one MLflow parent.

- The DAG is read from DVC (``components/dvc_project.py``), so stages added to ``dvc.yaml`` need no change.
  Each task runs ``dvc --wait-for-lock repro --single-item <stage>`` once the stages it needs are done;
  independent stages run concurrently. DVC's cache and ``dvc.lock`` are the ones plain ``dvc repro``
  uses, so both give the same outputs and skip the same work.
- A stage DVC skips (``didn't change`` or restored from its run cache) is reported *cached*, with the
  MLflow run that produced its outputs: the run tagged ``dvc.md5.<out>`` with the md5 in ``dvc.lock``.
- The flow opens the MLflow parent run and hands its id to the stage processes
  (``CODEMILL_PARENT_RUN_ID``), so their runs nest under it (``components/tracking.py``).
- Every stage process runs under a guard in its own session (``components/processes.py``): a failure fails
  the task with the stage's last output lines; a cancellation, SIGTERM or SIGKILL of the flow run ends
  the stage's whole process tree. Failed stages are retried ``retries`` times.
- ``overrides`` (``{"dedup.level": "file"}``, CLI ``--set``) or ``experiment`` run the selection as one
  DVC experiment (``dvc exp run --name NAME --set-param KEY=VALUE... [TARGETS]``): DVC records the
  params, ``dvc.lock`` and metrics under the experiment's name, so the run is reproducible and listed by
  ``dvc exp show``; the experiment is one task, and the per-stage rows are read from DVC's output.
- At the end: a table artifact ``pipeline-stages`` (status, cached, duration, key metrics, MLflow run)
  and a markdown artifact ``pipeline-summary`` (eval scores and the registered model version).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait

from components import tracking
from components.corpus_stats import STATS_DIR
from components.dvc_project import DvcStage, experiment_command, locked_outs, read_dag, select, stage_command
from components.params import Params, load_params
from components.processes import CommandFailed, run_guarded, terminate_all, tool_env
from components.tracking import PARENT_RUN_ENV, TAG_DVC_EXP, ParentRun

TAIL_LINES = 30
RAN = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' (?:didn't change|is cached)")
EXPERIMENT_NAME = re.compile(r"Reproducing experiment '([^']+)'")


class StageFailed(RuntimeError):
    """A stage process failed; the message names the stage and ends with its last output lines.

    ``rows``: the stage table of an experiment that failed part way (each stage's status).
    """

    def __init__(self, message: str, rows: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


class PipelineFailed(RuntimeError):
    """At least one stage failed; the message carries each failed stage's error."""


# ----------------------------------------------------------------------------------------------- helpers
def validated_params(root: Path, overrides: dict[str, str] | None) -> Params:
    """``params.yaml`` with the overrides applied as DVC applies them (values parsed as YAML), validated."""
    return load_params(root / "params.yaml", overrides=overrides)


def stage_env(parent_run_id: str) -> dict[str, str]:
    """The stage processes' environment: ours, the parent run, and this interpreter's tools first on PATH."""
    return tool_env({PARENT_RUN_ENV: parent_run_id})


# ------------------------------------------------------------------------------------------------- MLflow
def open_parent_run(
    root: Path,
    params: Params,
    experiment: str | None,
    targets: list[str] | None,
    overrides: dict[str, str] | None,
) -> ParentRun:
    """Create the pipeline's MLflow parent run, named by its experiment or overrides (and the time)."""
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": str(flow_run.id or "")}
    if experiment:
        tags[TAG_DVC_EXP] = experiment
    if targets:
        tags["codemill.targets"] = ",".join(targets)
    label = experiment or " ".join(f"{key}={value}" for key, value in (overrides or {}).items()) or None
    return tracking.create_parent_run(params.tracking, "pipeline", label, tags, root=root)


# ------------------------------------------------------------------------------------------------- tasks
class DvcProgress:
    """Follows DVC's output: logs each line, notes the stages it runs or skips and the experiment name."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.started: list[tuple[float, str]] = []  # (time, stage) as DVC announces each run
        self.skipped: set[str] = set()
        self.experiment: str | None = None

    def __call__(self, line: str) -> None:
        self.logger.info(line)
        if match := RAN.search(line):
            self.started.append((time.monotonic(), match.group(1)))
        elif match := SKIPPED.search(line):
            self.skipped.add(match.group(1))
        elif match := EXPERIMENT_NAME.search(line):
            self.experiment = match.group(1)

    def ran(self) -> set[str]:
        """The stages DVC ran (the last one may have failed)."""
        return {stage for _, stage in self.started}

    def seconds(self, ended: float) -> dict[str, float]:
        """Per stage run: from DVC announcing it to DVC announcing the next one (or ``ended``)."""
        ends = [mark for mark, _ in self.started[1:]] + [ended]
        return {stage: end - start for (start, stage), end in zip(self.started, ends, strict=False)}


def _stage_row(
    root: Path, stage: DvcStage, status: str, seconds: float | None, parent: ParentRun
) -> dict[str, Any]:
    """A row of the stage table; for a stage that ran or was cached, the MLflow run of its outputs."""
    done = status in ("ran", "cached")
    outs = locked_outs(root, stage) if done else {}
    return {
        "stage": stage.address,
        "status": status,
        "cached": status == "cached",
        "seconds": None if seconds is None else round(seconds, 2),
        "mlflow_run": tracking.producing_run(parent, stage.name, outs) if done else None,
        "outs": outs,
    }


@task(name="dvc-stage", task_run_name="{stage.address}", cache_policy=NO_CACHE)
def run_stage(stage: DvcStage, root: str, parent: ParentRun, force: bool = False) -> dict[str, Any]:
    """Run one stage through DVC in its own process group; returns its row of the stage table."""
    progress = DvcProgress(get_run_logger())
    started = time.monotonic()
    try:
        run_guarded(stage_command(stage, force), root, stage_env(parent.run_id), progress, TAIL_LINES)
    except CommandFailed as exc:
        raise StageFailed(f"stage '{stage.address}' failed: {exc}") from None
    status = "ran" if stage.address in progress.ran() else "cached"
    row = _stage_row(Path(root), stage, status, time.monotonic() - started, parent)
    progress.logger.info("stage %s: %s (MLflow run %s)", stage.address, status, row["mlflow_run"])
    return row


@task(name="dvc-experiment", task_run_name="experiment", cache_policy=NO_CACHE)
def run_experiment(
    stages: list[DvcStage],
    root: str,
    parent: ParentRun,
    overrides: dict[str, str],
    experiment: str | None,
    targets: list[str] | None,
    force: bool = False,
    single_item: bool = False,
) -> list[dict[str, Any]]:
    """Run the selected stages as one DVC experiment; returns a row per stage (with the experiment name).

    On failure, raises ``StageFailed`` naming the stage DVC was running, with the rows as ``.rows``.
    """
    progress = DvcProgress(get_run_logger())
    command = experiment_command(overrides, experiment, targets, force, single_item)
    failure = None
    try:
        run_guarded(command, root, stage_env(parent.run_id), progress, TAIL_LINES)
    except CommandFailed as exc:
        where = f"stage '{progress.started[-1][1]}' failed in" if progress.started else "could not run"
        failure = StageFailed(f"{where} experiment {experiment or progress.experiment or ''}: {exc}")
    seconds = progress.seconds(time.monotonic())
    rows = []
    for stage in stages:
        status = "cached" if stage.address in progress.skipped else "not run"
        if stage.address in seconds:
            failed = failure is not None and stage.address == progress.started[-1][1]
            status = "failed" if failed else "ran"
        rows.append(_stage_row(Path(root), stage, status, seconds.get(stage.address), parent))
        rows[-1]["experiment"] = experiment or progress.experiment
    if failure is not None:
        failure.rows = rows
        raise failure
    return rows


# -------------------------------------------------------------------------------------------- artifacts
def _report_metrics(root: Path, stage: DvcStage) -> dict[str, Any]:
    """``files_in``, ``files_out`` and the numeric ``metrics`` of the stage's report(s), if any."""
    found: dict[str, Any] = {}
    for path in stage.metrics:
        try:
            report = json.loads((root / path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict):
            continue
        for key in ("files_in", "files_out"):
            if key in report:
                found[key] = report[key]
        metrics = report.get("metrics")
        if isinstance(metrics, dict):
            found.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    return found


def _format_metrics(metrics: dict[str, Any], limit: int = 6) -> str:
    items = [(k, v) for k, v in metrics.items() if k not in ("files_in", "files_out")][:limit]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def stage_table(root: Path, stages: list[DvcStage], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the ``pipeline-stages`` artifact: one per selected stage, in DAG order."""
    table = []
    for stage in stages:
        row = rows.get(stage.address, {"status": "not run", "cached": False, "seconds": None})
        metrics = _report_metrics(root, stage) if row["status"] in ("ran", "cached") else {}
        table.append(
            {
                "stage": stage.address,
                "status": row["status"],
                "cached": row["cached"],
                "seconds": row.get("seconds"),
                "files_in": metrics.get("files_in"),
                "files_out": metrics.get("files_out"),
                "key_metrics": _format_metrics(metrics),
                "mlflow_run": row.get("mlflow_run"),
                **({"experiment": row["experiment"]} if row.get("experiment") else {}),
            }
        )
    return table


def summary_markdown(root: Path, table: list[dict[str, Any]], parent_run_id: str, failures: list[str]) -> str:
    """The ``pipeline-summary`` artifact: outcome, eval scores and the registered model version."""
    from components.report import read_eval_report
    from components.summary import (
        format_alignment_summary,
        format_eval_summary,
        format_language_summary,
        format_model_summary,
        format_registry_summary,
        load_reports,
    )

    cached = sum(row["cached"] for row in table)
    ran = sum(row["status"] == "ran" for row in table)
    lines = [
        "# codemill pipeline",
        "",
        f"**{'failed' if failures else 'completed'}**: {ran} stage(s) ran, {cached} cached, "
        f"{len(table) - ran - cached} not run. MLflow parent run `{parent_run_id}`.",
        "",
    ]
    for failure in failures:
        lines += ["```", failure, "```", ""]
    reports = load_reports(root / "reports", root / "dvc.yaml")
    trained = format_model_summary(reports)
    scores = format_eval_summary(read_eval_report(root / "reports" / "eval.json"))
    lines += ["## Models", "", f"```\n{trained}\n```" if trained else "None trained yet.", ""]
    lines += ["## Eval scores", "", f"```\n{scores}\n```" if scores else "No evaluation yet.", ""]
    languages = format_language_summary(reports, read_eval_report(root / "reports" / "eval.json"))
    lines += ["## Languages", "", f"```\n{languages}\n```" if languages else "No data stage yet.", ""]
    plots = sorted((root / "reports" / STATS_DIR).glob("*.png"))
    lines += ["## Corpus statistics", ""]
    lines += [f"- `{p.relative_to(root)}` (MLflow: the {p.stem} run, `corpus_stats/`)" for p in plots]
    lines += [""] if plots else ["None yet.", ""]
    aligned = format_alignment_summary(reports)
    lines += ["## Alignment", "", f"```\n{aligned}\n```" if aligned else "No alignment yet.", ""]
    registered = format_registry_summary(reports)
    lines += ["## Registered model", "", f"```\n{registered}\n```" if registered else "None registered.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- flow
def _retry_policy(params: Params, retries: int | None, delay_s: float | None) -> tuple[int, float]:
    """Flow arguments win over params ``orchestration.retries`` / ``orchestration.retry_delay_s``."""
    section = params.orchestration
    return (
        section.retries if retries is None else retries,
        section.retry_delay_s if delay_s is None else delay_s,
    )


def _submit_stage_tasks(
    stages: list[DvcStage], root: Path, parent: ParentRun, force: bool, retries: int, delay_s: float
) -> dict[str, PrefectFuture]:
    """Submit one task per stage, each waiting for the stages it needs (they start as those complete)."""
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=delay_s)
    futures: dict[str, PrefectFuture] = {}
    for stage in stages:
        upstream = [futures[address] for address in stage.upstream if address in futures]
        futures[stage.address] = stage_task.submit(  # type: ignore[call-overload]  # Prefect's overloads
            stage, str(root), parent, force, wait_for=upstream
        )
    return futures


def _results(futures: dict[str, PrefectFuture]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The rows of the finished stage tasks and the failure messages (stages never started have no row)."""
    rows, failures = {}, []
    for address, future in futures.items():
        if future.state.is_completed():
            rows[address] = future.result()
        elif future.state.is_failed():
            failures.append(str(future.result(raise_on_failure=False)))
            rows[address] = {"status": "failed", "cached": False, "seconds": None}
    return rows, failures


# The flow is async only so that Prefect's async engine runs it: the sync engine ends every flow run by
# joining its heartbeat thread, which sleeps in 1 s steps (about 0.65 s more per run, measured). The body
# waits for the stage tasks in a worker thread; the few short blocking calls (DVC index, MLflow) stay inline.
@flow(name="pipeline")
async def pipeline(
    targets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
    experiment: str | None = None,
    force: bool = False,
    single_item: bool = False,
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Run the DVC pipeline (``targets`` and what they need; all stages by default) stage by stage.

    ``force`` reruns the selected stages even if DVC has them cached; ``single_item`` runs only the targets.
    ``overrides`` (``{"dedup.level": "file"}``) or ``experiment`` (a name) run it as a DVC experiment.
    ``retries``: attempts after a stage (or the experiment) fails (default: params
    ``orchestration.retries``), ``retry_delay_seconds`` apart.
    """
    logger = get_run_logger()
    root = Path.cwd().resolve()
    params = validated_params(root, overrides)  # a bad key or value fails here, naming it
    retries, delay_s = _retry_policy(params, retries, retry_delay_seconds)
    stages = select(read_dag(root), targets, single_item)
    parent = open_parent_run(root, params, experiment, targets, overrides)
    logger.info("MLflow parent run %s; stages: %s", parent.run_id, " ".join(s.address for s in stages))
    failures: list[str] = []
    try:
        if overrides or experiment:
            arguments = (dict(overrides or {}), experiment, targets, force, single_item)
            experiment_task = run_experiment.with_options(retries=retries, retry_delay_seconds=delay_s)
            future = experiment_task.submit(stages, str(root), parent, *arguments)
            await asyncio.to_thread(future.wait)
            result = future.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                failures.append(str(result))
                result = getattr(result, "rows", [])
            rows = {row["stage"]: row for row in result}
        else:
            futures = _submit_stage_tasks(stages, root, parent, force, retries, delay_s)
            await asyncio.to_thread(wait, list(futures.values()))
            rows, failures = _results(futures)
    except BaseException:  # cancelled, interrupted or terminated: no stage may outlive the flow
        terminate_all()
        tracking.close_parent_run(parent, [], "KILLED")
        raise
    table = stage_table(root, stages, rows)
    await acreate_table_artifact(
        table=table, key="pipeline-stages", description="codemill stages of this run"
    )
    await acreate_markdown_artifact(
        summary_markdown(root, table, parent.run_id, failures),
        key="pipeline-summary",
        description="codemill run summary",
    )
    tracking.close_parent_run(parent, table, "FAILED" if failures else "FINISHED")
    if failures:
        raise PipelineFailed("\n\n".join(failures))
    pending = pending_approval(root, params)
    if pending is not None:
        from flows.approval import approve_promotion

        promotion = params.register_.promotion
        await approve_promotion(
            *pending, tracking.tracking_uri(params.tracking, root), promotion.approval_timeout_s
        )
    return table


def pending_approval(root: Path, params: Params) -> tuple[str, str] | None:
    """``(registered name, version)`` when approval is on and the registered version awaits it."""
    if not params.register_.promotion.approval:
        return None
    from components.register import registry
    from components.report import read_report

    report_path = root / "reports" / "register.json"
    if not report_path.exists():
        return None
    details = read_report(report_path).get("details", {})
    name, version = details.get("model"), details.get("version")
    if not name or not version:
        return None
    registry.connect(tracking.tracking_uri(params.tracking, root))
    tags = registry.version_tags(name, str(version))
    return (name, str(version)) if tags.get(registry.TAG_APPROVAL) == registry.PENDING else None


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline KWARGS_JSON``: run the flow with these arguments (what ``codemill run``
    starts under its guard, so the flow, its stages and Prefect's temporary API server die with it)."""
    import sys

    kwargs = json.loads((sys.argv[1:] if argv is None else argv)[0])
    try:
        asyncio.run(pipeline(**kwargs))
    except Exception as exc:
        print(f"codemill run: the pipeline failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
