"""Ablation sweeps: one DVC experiment per value of a param, compared on the metrics that matter.

The Prefect flow (flows/ablation.py) only orders these steps. Each value runs as
``dvc exp run --temp --name ablation-<key>-<value> -S ++<key>=<value>`` under its own MLflow parent run
(tags ``ablation``, ``ablation.value``, ``ablation.sweep``, ``dvc.exp_name``); the stage runs nest under
it through ``CODEMILL_PARENT_RUN_ID``. The comparison reads every experiment's reports from
``dvc exp show --json`` (stages restored from the run cache have no MLflow run of their own, but their
reports are in the experiment), writes ``reports/ablations/<key>.csv`` and ``<key>.png``, and logs them
to an ablation summary run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import tracking
from components.errors import ParamsError
from components.params import Params, load_params, parse_value
from components.processes import tool_env
from components.report import intervals_apart
from components.tracking import PARENT_RUN_ENV, TAG_DVC_EXP, ParentRun

DEFAULT_KEY = "dedup.level"
DEFAULT_VALUES = ["none", "exact", "file", "repo"]
REPORTS_DIR = Path("reports/ablations")
#: DVC from this interpreter (no need for the venv to be on PATH).
DVC = [sys.executable, "-m", "dvc"]

TAG_ABLATION = "ablation"
TAG_VALUE = "ablation.value"
TAG_SWEEP = "ablation.sweep"  # the summary run's id, on every parent run of the sweep
#: Stages an ablation leaves out unless asked for (``--target``).
NOT_ABLATED = ("register",)

#: Data metrics compared across values: column -> (report in the experiment, keys into its JSON).
DATA_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dedup.files_out": ("reports/dedup.json", ("files_out",)),
    "dedup.bytes_out": ("reports/dedup.json", ("bytes_out",)),
    "dedup.dedup_ratio": ("reports/dedup.json", ("metrics", "dedup_ratio")),
    "tokens.train": ("reports/tokenize.json", ("metrics", "tokens.train")),
}
#: A model stage's report names it by this metric; compared as ``<stage>.val_bpb``.
MODEL_BPB = ("metrics", "final_val_bpb")
#: The evaluate stage's summary: every score with an interval becomes ``<model>.<score>`` (with
#: ``.ci_low`` / ``.ci_high`` columns beside it).
EVAL_REPORT = "reports/eval.json"
INTERVAL_SUFFIXES = (".ci_low", ".ci_high")


def slug(text: str) -> str:
    """``text`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_`` (git ref safe)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".") or "_"


def experiment_name(key: str, value: str) -> str:
    """The DVC experiment name of one value: ``ablation-<key>-<value>``."""
    return f"ablation-{slug(key)}-{slug(value)}"


def check_values(params_path: str | Path, key: str, values: Sequence[str]) -> Params:
    """Validate every ``key=value`` against params before any work; raises ParamsError naming the key."""
    if not values:
        raise ParamsError(f"{key}: an ablation needs at least one value")
    if len({experiment_name(key, value) for value in values}) != len(values):
        raise ParamsError(f"{key}: values {list(values)} repeat (or differ only in characters a name drops)")
    for value in values:
        load_params(params_path, overrides={key: value})
    return load_params(params_path)


def default_targets(dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """Every stage of ``dvc.yaml`` except ``register``: an ablation compares models, it does not publish
    them (no model version per value in the registry)."""
    from components.dvc_project import stage_names

    return [stage for stage in stage_names(dvc_file) if stage not in NOT_ABLATED]


def exp_run_command(key: str, value: str, targets: Sequence[str] = ()) -> list[str]:
    """``dvc exp run`` of one value in a temporary workspace DVC manages (shares cache and run cache).

    ``++key=value`` (Hydra's add-or-override) also sets a key params.yaml does not list yet, such as one
    language's weight in ``tokenize.mixture.languages``.
    """
    name = experiment_name(key, value)
    return [*DVC, "exp", "run", "--temp", "--name", name, "-S", f"++{key}={value}", *targets]


def experiment_env(params: Params, parent_run_id: str) -> dict[str, str]:
    """The environment of one experiment: its parent run, an absolute tracking URI (the stages run in a
    temporary directory, where a relative ``sqlite:///mlflow.db`` would be another store), and this
    interpreter first on PATH (dvc.yaml calls ``python -m components.<stage>``)."""
    uri = tracking.tracking_uri(params.tracking, Path.cwd())
    return tool_env({PARENT_RUN_ENV: parent_run_id, "MLFLOW_TRACKING_URI": uri})


def start_summary_run(
    params: Params, key: str, values: Sequence[str], extra_tags: dict[str, str] | None = None
) -> ParentRun:
    """Create the sweep's summary run (``codemill.kind=ablation``, ``ablation=<key>``)."""
    tags = {TAG_ABLATION: key, **(extra_tags or {})}
    return tracking.create_parent_run(
        params.tracking, "ablation", key, tags, {"values": json.dumps(list(values))}, Path.cwd()
    )


def start_parent_run(params: Params, key: str, value: str, sweep: ParentRun) -> ParentRun:
    """Create the pipeline parent run of one value, tagged for the sweep."""
    name = experiment_name(key, value)
    tags = {TAG_ABLATION: key, TAG_VALUE: value, TAG_SWEEP: sweep.run_id, TAG_DVC_EXP: name}
    return tracking.create_parent_run(
        params.tracking, "pipeline", f"{key}={value}", tags, {key: value}, Path.cwd()
    )


def experiment_reports(exp_show: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The metrics files (path -> JSON) of experiment ``name`` in ``dvc exp show --json`` output."""
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            if experiment.get("name") == name:
                metrics = experiment["revs"][0]["data"].get("metrics") or {}
                return {path: entry["data"] for path, entry in metrics.items() if "data" in entry}
    raise LookupError(f"experiment {name!r} is not in `dvc exp show`")


def _lookup(tree: Any, keys: Sequence[str]) -> float | None:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    is_number = isinstance(tree, int | float) and not isinstance(tree, bool)
    return float(tree) if is_number else None


def comparison_metrics(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The metrics that matter from one experiment's reports (those that exist): data kept after dedup,
    training tokens, training's val bits per byte of each model stage, and every score of each evaluated
    model that has an interval (pass@k, gold and held-out bits per byte, line exact match), with it.
    """
    found = {name: _lookup(reports.get(path), keys) for name, (path, keys) in DATA_METRICS.items()}
    for path, report in reports.items():  # dvc.yaml order
        found[f"{Path(path).stem}.val_bpb"] = _lookup(report, MODEL_BPB)
    eval_models = (reports.get(EVAL_REPORT) or {}).get("models") or {}
    for model, scores in eval_models.items():
        for score in scores:
            if f"{score}.ci_low" in scores:
                for suffix in ("", *INTERVAL_SUFFIXES):
                    found[f"{model}.{score}{suffix}"] = _lookup(scores, (f"{score}{suffix}",))
    return {name: value for name, value in found.items() if value is not None}


def comparison_rows(key: str, runs: Sequence[dict[str, str]], exp_show: list[dict[str, Any]]) -> list[dict]:
    """One row per value: ``{key: value, experiment, run_id, <metric>: number, ...}``.

    ``runs`` holds ``{"value", "experiment", "run_id"}`` per value, in sweep order.
    """
    return [
        {
            key: run["value"],
            "experiment": run["experiment"],
            "run_id": run["run_id"],
            **comparison_metrics(experiment_reports(exp_show, run["experiment"])),
        }
        for run in runs
    ]


def metric_columns(rows: Sequence[dict[str, Any]], intervals: bool = False) -> list[str]:
    """The numeric columns of the rows, in first-seen order (interval bounds only with ``intervals``)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update({name: None for name, value in row.items() if isinstance(value, float)})
    return [name for name in columns if intervals or not name.endswith(INTERVAL_SUFFIXES)]


def interval_of(row: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The 95% interval of ``metric`` in ``row``, when it has one."""
    low, high = row.get(f"{metric}.ci_low"), row.get(f"{metric}.ci_high")
    return (low, high) if isinstance(low, float) and isinstance(high, float) else None


def beyond_intervals(rows: Sequence[dict[str, Any]], metric: str) -> list[bool]:
    """Per row, whether its ``metric`` differs from the first row's beyond both intervals (they do not
    overlap): the arms are separate runs, so only their intervals are at hand, not paired items."""
    first = interval_of(rows[0], metric) if rows else None
    marks = []
    for row in rows:
        own = interval_of(row, metric)
        marks.append(first is not None and own is not None and intervals_apart(first, own))
    return marks


def all_zero(rows: Sequence[dict[str, Any]], metric: str) -> bool:
    """Whether every row's ``metric`` (and interval) is 0 or missing: a panel with nothing to show."""
    names = (metric, *(f"{metric}{suffix}" for suffix in INTERVAL_SUFFIXES))
    return all(not row.get(name) for row in rows for name in names)


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (empty cells where a value lacks a metric)."""
    columns = [name for name in rows[0] if not isinstance(rows[0][name], float)]
    columns += metric_columns(rows, intervals=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if not isinstance(value, float):
        return "-" if value is None else str(value)
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"


def _table_cell(row: dict[str, Any], metric: str, beyond: bool) -> str:
    span = interval_of(row, metric)
    cell = _fmt(row.get(metric)) + (f" [{_fmt(span[0])}, {_fmt(span[1])}]" if span else "")
    return cell + (" *" if beyond else "")


def table_markdown(key: str, rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table: the value, then each metric with its interval; ``*`` marks a value
    whose interval does not overlap the first value's."""
    metrics = metric_columns(rows)
    marks = {metric: beyond_intervals(rows, metric) for metric in metrics}
    lines = ["| " + " | ".join([key, *metrics]) + " |", "|" + " --- |" * (len(metrics) + 1)]
    for index, row in enumerate(rows):
        cells = [_fmt(row.get(key)), *(_table_cell(row, metric, marks[metric][index]) for metric in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(any(column) for column in marks.values()):
        lines.append(f"\n`*`: the interval does not overlap that of {key} = {rows[0].get(key)}")
    return "\n".join(lines)


def plot(key: str, rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A PNG with one panel per metric against the value: points with their 95% intervals, each panel's
    y axis fitted to its data (not from 0), a red point where the interval does not overlap the first
    value's; panels where every value is 0 are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metric for metric in metric_columns(rows) if not all_zero(rows, metric)] or ["(no metrics)"]
    values = [row[key] for row in rows]
    parsed = [parse_value(value, key) for value in values]
    numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in parsed)
    positions = parsed if numeric else list(range(len(values)))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        heights = [row.get(metric, math.nan) for row in rows]
        spans = [
            interval_of(row, metric) or (height, height) for row, height in zip(rows, heights, strict=True)
        ]
        below = [height - low for height, (low, _) in zip(heights, spans, strict=True)]
        above = [high - height for height, (_, high) in zip(heights, spans, strict=True)]
        axis.errorbar(positions, heights, yerr=[below, above], fmt="o-" if numeric else "o", capsize=4)
        for position, height, beyond in zip(positions, heights, beyond_intervals(rows, metric), strict=True):
            if beyond:
                axis.plot([position], [height], "o", color="tab:red")
        if not numeric:
            axis.set_xticks(positions, [str(value) for value in values])
        axis.margins(y=0.15)  # the y range follows the data and its intervals
        axis.set_title(metric, fontsize=10)
        axis.set_xlabel(key)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(metrics) :]:
        axis.set_visible(False)
    figure.suptitle(f"ablation over {key}")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same bytes per run
    plt.close(figure)
    return path


def write_comparison(
    key: str, rows: Sequence[dict[str, Any]], out_dir: str | Path = REPORTS_DIR
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<key>.csv`` and ``<out_dir>/<key>.png``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / f"{slug(key)}.csv"
    table.write_text(table_csv(rows), encoding="utf-8")
    return table, plot(key, rows, out_dir / f"{slug(key)}.png")


def log_comparison(summary: ParentRun, rows: Sequence[dict[str, Any]], files: Sequence[Path]) -> None:
    """Log each value's metrics on its parent run (for MLflow's compare view) and the files on the summary."""
    tracking.log_comparison(summary, rows, files, artifact_path="ablation")
