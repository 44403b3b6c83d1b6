"""Ablation sweeps as a Prefect flow: one DVC experiment per value of a param, then a comparison.

For each value, in order: an MLflow parent run tagged ``ablation=<key>``, ``ablation.value=<value>``,
then ``dvc exp run --temp --name ablation-<key>-<value> -S <key>=<value>`` with that run's id in
``CODEMILL_PARENT_RUN_ID`` (the stage runs nest under it). ``--temp`` runs the experiment in a temporary
copy DVC manages, so the workspace is left as it was, and with this process's environment; every
experiment shares the DVC cache and run cache, so stages the key does not reach are restored, not rerun.
(``--queue`` + ``--run-all`` would run them in DVC's celery workers, which do not get a per-experiment
environment: the stage runs would not find their parent run.) Then the comparison
(components/ablation.py): ``reports/ablations/<key>.csv`` and ``.png``, logged to MLflow and as Prefect
artifacts. ``codemill ablate KEY V1 V2 ...`` runs it (``ablate_main``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import ablation as ab
from components.cli import QUIET_ENV
from components.config import DEFAULT_PARAMS, ParamsError
from flows.process_group import run_guarded, terminate_all


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
def run_value(key: str, value: str, sweep_id: str, targets: list[str], params_path: str) -> dict[str, str]:
    """Run one value as a DVC experiment under its own MLflow parent run."""
    logger = get_run_logger()
    params = ab.check_values(params_path, key, [value])
    run_id = ab.start_parent_run(params, key, value, sweep_id)
    name = ab.experiment_name(key, value)
    logger.info("experiment %s, MLflow parent run %s", name, run_id)
    ok = False
    try:
        run_guarded(
            ab.exp_run_command(key, value, targets), env=ab.experiment_env(params, run_id), on_line=print
        )
        ok = True
    finally:
        ab.end_run(run_id, ok)
    return {"value": value, "experiment": name, "run_id": run_id}


@task(name="compare", cache_policy=NO_CACHE)
def compare(key: str, runs: list[dict[str, str]], sweep_id: str) -> list[dict[str, Any]]:
    """Collect each experiment's metrics, write and log the table and the plot, publish artifacts."""
    shown = subprocess.run([*ab.DVC, "exp", "show", "--json"], capture_output=True, text=True, check=True)
    rows = ab.comparison_rows(key, runs, json.loads(shown.stdout))
    table, plot = ab.write_comparison(key, rows)
    ab.log_comparison(sweep_id, rows, [table, plot])
    artifact_key = "ablation-" + "".join(c if c.isalnum() else "-" for c in key.lower())
    create_table_artifact(table=rows, key=artifact_key, description=f"codemill ablation over {key}")
    create_markdown_artifact(
        f"# Ablation over `{key}`\n\n{ab.table_markdown(key, rows)}\n\n"
        f"Table: `{table}`  \nPlot: `{plot}` (also on MLflow run `{sweep_id}`, folder `ablation/`)\n",
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
    sweep_id = ab.start_summary_run(params, key, values, {"prefect.flow_run_id": str(flow_run.id or "")})
    ok = False
    try:
        forget_previous([ab.experiment_name(key, value) for value in values])
        runs = [run_value(key, value, sweep_id, targets, params_path) for value in values]
        rows = compare(key, runs, sweep_id)
        ok = True
    except BaseException:  # failed, cancelled or interrupted: no experiment may outlive the flow
        terminate_all()
        raise
    finally:
        ab.end_run(sweep_id, ok)
    return rows


def ablate_main(argv: list[str] | None = None) -> int:
    """``codemill ablate [KEY V1 V2 ...]``: the ablation flow on Prefect (ephemeral API unless
    ``PREFECT_API_URL`` is set). Returns the exit code."""
    parser = argparse.ArgumentParser(prog="codemill ablate", description=ablate_main.__doc__)
    parser.add_argument(
        "key", nargs="?", default=ab.DEFAULT_KEY, help=f"param key (default {ab.DEFAULT_KEY})"
    )
    parser.add_argument(
        "values", nargs="*", help=f"values (default for {ab.DEFAULT_KEY}: {ab.DEFAULT_VALUES})"
    )
    parser.add_argument(
        "--params",
        default=DEFAULT_PARAMS,
        help="parameter file the values are checked against and tracking settings come from (default: "
        "params.yaml; the experiments set the key in params.yaml, which the stages read)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        help="run up to this stage (repeatable; default: all but register)",
    )
    args = parser.parse_args(argv)
    values = args.values or (ab.DEFAULT_VALUES if args.key == ab.DEFAULT_KEY else [])
    try:
        ab.check_values(args.params, args.key, values)
    except ParamsError as exc:
        print(f"codemill ablate: {exc}", file=sys.stderr)
        return 2
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    try:
        rows = ablation(key=args.key, values=values, targets=args.target, params_path=args.params)
    except Exception as exc:
        print(f"codemill ablate: {exc}", file=sys.stderr)
        return 1
    print(ab.table_markdown(args.key, rows))
    print(f"\ntable and plot: {ab.REPORTS_DIR}/{ab.slug(args.key)}.csv, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(ablate_main())
