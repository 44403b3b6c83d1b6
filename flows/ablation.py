"""Ablation sweeps as a Prefect flow: one DVC experiment per value of a param, then a comparison.

For each value, in order: an MLflow parent run tagged ``ablation=<key>``, ``ablation.value=<value>``,
then ``dvc exp run --temp --name ablation-<key>-<value> -S <key>=<value>`` with that run's id in
``CODEMILL_PARENT_RUN_ID`` (the stage runs nest under it). ``--temp`` runs the experiment in a temporary
copy DVC manages, so the workspace is left as it was, and with this process's environment; every
experiment shares the DVC cache and run cache, so stages the key does not reach are restored, not rerun.
(``--queue`` + ``--run-all`` would run them in DVC's celery workers, which do not get a per-experiment
environment: the stage runs would not find their parent run.) Then the comparison
(components/ablation.py): ``reports/ablations/<key>.csv`` and ``.png``, logged to MLflow and as Prefect
artifacts. ``codemill ablate KEY V1 V2 ...`` runs it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import ablation as ab
from components import tracking
from components.params import DEFAULT_PARAMS
from components.processes import run_guarded, terminate_all
from components.tracking import ParentRun


@task(name="forget-previous", cache_policy=NO_CACHE)
def forget_previous(names: list[str]) -> list[str]:
    """Remove earlier DVC experiments with these names (a rerun of a sweep replaces them)."""
    listed = subprocess.run(
        [*ab.DVC, "exp", "list", "--name-only"], capture_output=True, text=True, check=True
    )
    existing = sorted(set(listed.stdout.split()) & set(names))
    if existing:
        run_guarded([*ab.DVC, "exp", "remove", *existing])
    return existing


@task(name="experiment", task_run_name="{key}={value}", cache_policy=NO_CACHE)
def run_value(key: str, value: str, sweep: ParentRun, targets: list[str], params_path: str) -> dict[str, str]:
    """Run one value as a DVC experiment under its own MLflow parent run."""
    logger = get_run_logger()
    params = ab.check_values(params_path, key, [value])
    parent = ab.start_parent_run(params, key, value, sweep)
    name = ab.experiment_name(key, value)
    logger.info("experiment %s, MLflow parent run %s", name, parent.run_id)
    ok = False
    try:
        command = ab.exp_run_command(key, value, targets)
        run_guarded(command, env=ab.experiment_env(params, parent.run_id), on_line=print)
        ok = True
    finally:
        tracking.end_run(parent, "FINISHED" if ok else "FAILED")
    return {"value": value, "experiment": name, "run_id": parent.run_id}


@task(name="compare", cache_policy=NO_CACHE)
def compare(key: str, runs: list[dict[str, str]], sweep: ParentRun) -> list[dict[str, Any]]:
    """Collect each experiment's metrics, write and log the table and the plot, publish artifacts."""
    shown = subprocess.run([*ab.DVC, "exp", "show", "--json"], capture_output=True, text=True, check=True)
    rows = ab.comparison_rows(key, runs, json.loads(shown.stdout))
    table, plot = ab.write_comparison(key, rows)
    ab.log_comparison(sweep, rows, [table, plot])
    artifact_key = "ablation-" + "".join(c if c.isalnum() else "-" for c in key.lower())
    create_table_artifact(table=rows, key=artifact_key, description=f"codemill ablation over {key}")
    create_markdown_artifact(
        f"# Ablation over `{key}`\n\n{ab.table_markdown(key, rows)}\n\n"
        f"Table: `{table}`  \nPlot: `{plot}` (also on MLflow run `{sweep.run_id}`, folder `ablation/`)\n",
        key=f"{artifact_key}-summary",
        description=f"codemill ablation over {key}",
    )
    return rows


@flow(name="ablation", log_prints=True)
def ablation(
    key: str = ab.DEFAULT_KEY,
    values: list[str] = ab.DEFAULT_VALUES,
    targets: list[str] | None = None,
    params_path: str = DEFAULT_PARAMS,
) -> list[dict[str, Any]]:
    """One DVC experiment per value of ``key`` (up to ``targets``; default all but register), then compare."""
    from prefect.runtime import flow_run

    values = [str(value) for value in values]
    params = ab.check_values(params_path, key, values)  # a bad key or value fails before any work
    targets = list(targets or ab.default_targets())
    sweep = ab.start_summary_run(params, key, values, {"prefect.flow_run_id": str(flow_run.id or "")})
    ok = False
    try:
        forget_previous([ab.experiment_name(key, value) for value in values])
        runs = [run_value(key, value, sweep, targets, params_path) for value in values]
        rows = compare(key, runs, sweep)
        ok = True
    except BaseException:  # failed, cancelled or interrupted: no experiment may outlive the flow
        terminate_all()
        raise
    finally:
        tracking.end_run(sweep, "FINISHED" if ok else "FAILED")
    return rows
