"""MLflow conventions: the one module that logs to MLflow and decides how runs are named, nested and tagged.

(The registry and serving code in ``components/register/`` talk to the Model Registry themselves.)

- One experiment per project (``tracking.experiment``), created with the experiment kind of model
  training (``mlflow.experimentKind``), so the MLflow UI opens its runs view, not the GenAI overview.
- One *parent* run per pipeline run, per ablation value and per ablation sweep, all made by
  :func:`create_parent_run`, named so they tell apart (kind, time, DVC experiment or overrides).
  Stage runs nest under the run named by ``CODEMILL_PARENT_RUN_ID`` (set by the Prefect flows); under a
  plain ``dvc repro`` the first stage that runs creates it, and later stages of the same ``dvc``
  invocation find it through ``.codemill/pipeline_run.json`` (keyed by the ``dvc`` process).
- Every stage run is tagged with the git commit, dirty flag, DVC experiment name, stage name, and the
  DVC md5 of each output (the value ``dvc.lock`` records); it logs its params flattened
  (``dedup.level``) and what its report asks for: metrics, artifacts, extra datasets. Inputs and outputs
  are logged as datasets (``mlflow.log_input``) with their DVC md5 as digest.
- A stage DVC skips is linked to the run that produced its outputs (:func:`producing_run`); the parent
  records each stage's status and run as tags (:func:`close_parent_run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from components.params import StageContext
from components.params.shared import TrackingConfig
from components.processes import ProcessRecord
from components.report import Artifact, StageReport

PARENT_RUN_ENV = "CODEMILL_PARENT_RUN_ID"
SESSION_FILE = Path(".codemill") / "pipeline_run.json"

TAG_KIND = "codemill.kind"  # pipeline | ablation
TAG_STAGE = "codemill.stage"
TAG_STATUS = "codemill.status"  # + ".<stage>"
TAG_STAGE_RUN = "codemill.run"  # + ".<stage>"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DVC_EXP = "dvc.exp_name"
#: The process that owns a run while it is RUNNING: host, pid and start time (a killed owner's run is
#: marked KILLED by the next run of that stage or pipeline).
TAG_OWNER = "codemill.owner"
TAG_OUT_MD5 = "dvc.md5"  # + ".<output path>"
#: The experiment tag the MLflow UI reads to pick its view, and the value for model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(tracking: TrackingConfig, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` with a relative sqlite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str((root or Path.cwd()) / uri[len(prefix) :])
    return uri


def configure(tracking: TrackingConfig, root: Path | None = None) -> str:
    """Point MLflow at the tracking URI and the project's experiment (created if needed, as a model
    training experiment); returns the experiment id."""
    import mlflow

    root = root or Path.cwd()
    mlflow.set_tracking_uri(tracking_uri(tracking, root))
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        location = tracking.artifact_location
        if "://" not in location:
            location = (root / location).resolve().as_uri()
        experiment_id = mlflow.create_experiment(
            tracking.experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_state(root: Path | None = None) -> dict[str, str]:
    """Tags describing the code: commit hash and whether tracked files differ from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: str(dirty).lower()}


def owner_tag() -> str:
    """``host:pid:start-time`` of this process."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time()}"


def _owner_alive(owner: str) -> bool:
    """Whether the process an owner tag names still runs (on another host: assumed so)."""
    host, _, rest = owner.partition(":")
    pid, _, created = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        return ProcessRecord(int(pid), float(created)).alive()
    except ValueError:
        return True


def close_stale_runs(experiment_id: str, filters: Mapping[str, str]) -> list[str]:
    """Mark KILLED the RUNNING runs with ``filters`` tags whose owning process is gone; returns their ids."""
    import mlflow

    client = mlflow.MlflowClient()
    conditions = [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
    runs = client.search_runs(
        [experiment_id], filter_string=" and ".join(["attributes.status = 'RUNNING'", *conditions])
    )
    stale = [run.info.run_id for run in runs if not _owner_alive(run.data.tags.get(TAG_OWNER, ""))]
    for run_id in stale:
        client.set_terminated(run_id, status="KILLED")
    return stale


def run_tags(stage: str | None = None) -> dict[str, str]:
    """Tags every codemill run carries: git state, DVC experiment name, its owning process, the stage."""
    tags = {**git_state(), TAG_OWNER: owner_tag()}
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags[TAG_DVC_EXP] = exp_name
    if stage:
        tags[TAG_STAGE] = stage
    return tags


def _md5_file(path: str, fs: Any) -> str:
    digest = hashlib.md5()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_md5(path: str) -> str:
    """The md5 DVC records in ``dvc.lock`` for an output: a file's md5, or a directory's ``<md5>.dir``."""
    from components.shards import filesystem

    fs, root = filesystem(path)
    if not fs.isdir(root):
        return _md5_file(root, fs)
    root = root.rstrip("/")
    entries = [
        {"md5": _md5_file(file, fs), "relpath": file[len(root) + 1 :]} for file in sorted(fs.find(root))
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


# ------------------------------------------------------------------------------------------ parent runs
@dataclass(frozen=True)
class ParentRun:
    """A parent run (a pipeline run, an ablation value or sweep): where it lives and its id."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    def client(self) -> Any:
        """An MLflow client of the run's store."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)


def run_name(kind: str, label: str | None = None) -> str:
    """A parent run's name: its kind, what sets it apart (experiment, overrides, value) and the UTC time."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return " ".join(part for part in (kind, label, stamp) if part)


def create_parent_run(
    tracking: TrackingConfig,
    kind: str,
    label: str | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> ParentRun:
    """Create a parent run of ``kind`` (``pipeline`` or ``ablation``), status RUNNING until closed."""
    import mlflow

    experiment_id = configure(tracking, root)
    close_stale_runs(experiment_id, {TAG_KIND: kind})
    uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    all_tags = {TAG_KIND: kind, **run_tags(), **(tags or {})}
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name(kind, label))
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, value)
    return ParentRun(uri, experiment_id, run.info.run_id)


def end_run(parent: ParentRun, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
    """Set ``tags`` on a parent run and end it with ``status`` (FINISHED, FAILED, KILLED)."""
    from mlflow.entities import RunTag

    client = parent.client()
    if tags:
        client.log_batch(parent.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.set_terminated(parent.run_id, status=status)


def close_parent_run(parent: ParentRun, rows: Sequence[Mapping[str, Any]], status: str) -> None:
    """Record each stage's status and MLflow run (and the DVC experiments) on the parent, then end it."""
    tags = {f"{TAG_STATUS}.{row['stage']}": row["status"] for row in rows}
    tags |= {f"{TAG_STAGE_RUN}.{row['stage']}": row["mlflow_run"] for row in rows if row.get("mlflow_run")}
    experiments = sorted({row["experiment"] for row in rows if row.get("experiment")})
    if experiments:
        tags[TAG_DVC_EXP] = ",".join(experiments)
    end_run(parent, status, tags)


def producing_run(parent: ParentRun, stage: str, outs: Mapping[str, str]) -> str | None:
    """The MLflow run that produced ``stage``'s outputs: tagged with their ``dvc.lock`` md5 (newest first,
    this parent's own run preferred); for a stage without outputs, its run under this parent if any."""
    client = parent.client()
    for path, md5 in outs.items():
        runs = client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`{TAG_OUT_MD5}.{path}` = '{md5}'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        if runs:
            ours = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.run_id]
            return (ours or runs)[0].info.run_id
    runs = client.search_runs(
        [parent.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}' and tags.`{TAG_STAGE}` = '{stage}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _dvc_session_key() -> str:
    """Identify the ``dvc repro``/``dvc exp run`` invocation this process belongs to (or this process)."""
    proc: psutil.Process | None = psutil.Process().parent()
    while proc is not None:
        try:
            cmd = proc.cmdline()
            if any(Path(part).name == "dvc" for part in cmd[:2]):
                return f"{proc.pid}:{proc.create_time()}"
            proc = proc.parent()
        except psutil.Error:
            break
    me = psutil.Process()
    return f"{me.pid}:{me.create_time()}"


def parent_run_id(tracking: TrackingConfig, experiment_id: str) -> str:
    """The id of this pipeline run's parent MLflow run, creating it if needed (see module docstring)."""
    import mlflow

    from_env = os.environ.get(PARENT_RUN_ENV)
    if from_env:
        return from_env
    session = {
        "key": _dvc_session_key(),
        "tracking_uri": mlflow.get_tracking_uri(),
        "experiment_id": experiment_id,
    }
    if SESSION_FILE.exists():
        with contextlib.suppress(ValueError, KeyError, mlflow.exceptions.MlflowException):
            recorded = json.loads(SESSION_FILE.read_text())
            if {key: recorded[key] for key in session} == session:
                return mlflow.MlflowClient().get_run(recorded["run_id"]).info.run_id  # raises if gone
    parent = create_parent_run(tracking, "pipeline", "dvc repro")
    end_run(parent)
    SESSION_FILE.parent.mkdir(parents=True, exist_ok=True)
    SESSION_FILE.write_text(json.dumps({**session, "run_id": parent.run_id}))
    return parent.run_id


# ------------------------------------------------------------------------------------------- stage runs
def _log_dataset(path: str, context: str, digest: str) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = path if "://" in path else Path(path).resolve().as_uri()
    # MLflow registers the local source twice; pick the first candidate explicitly to avoid a warning.
    candidates = [s for s in get_registered_sources() if s._can_resolve(uri)][:1] or None
    source = resolve_dataset_source(uri, candidates)
    dataset = MetaDataset(source, name=path, digest=digest[:36])  # type: ignore[abstract]  # MLflow's own
    mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def stage_run(stage: str, context: StageContext, params: Mapping[str, Any]) -> Iterator[str]:
    """Open the nested MLflow run of ``stage`` under the pipeline's parent run; yields its run id."""
    import mlflow

    experiment_id = configure(context.tracking)
    close_stale_runs(experiment_id, {TAG_STAGE: stage})
    parent = parent_run_id(context.tracking, experiment_id)
    with (
        mlflow.start_run(run_id=parent),
        mlflow.start_run(run_name=stage, nested=True, tags=run_tags(stage)) as run,
    ):
        mlflow.log_params(dict(params))
        yield run.info.run_id


def log_stage_result(report: StageReport, report_path: str, inputs: list[str], outputs: list[str]) -> None:
    """Log a finished stage to the active run: what its report asks for, the report file, the datasets
    and the output md5 tags."""
    import mlflow

    if report.params:
        mlflow.log_params({key: _param_value(value) for key, value in report.params.items()})
    mlflow.log_metrics(report.numeric_metrics())
    mlflow.log_artifact(report_path, artifact_path="reports")
    log_artifacts(report.artifacts)
    for path in [*inputs, *report.datasets]:
        _log_dataset(path, "input", dvc_md5(path))
    for path in outputs:
        digest = dvc_md5(path)
        _log_dataset(path, "output", digest)
        # MLflow rejects "//" in tag names: an s3:// output is tagged dvc.md5.s3:/bucket/prefix.
        mlflow.set_tag(f"{TAG_OUT_MD5}.{path.replace('://', ':/')}", digest)


def log_artifacts(artifacts: Sequence[Artifact]) -> None:
    """Log files and directories to the active run (nothing without one)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    for artifact in artifacts:
        if Path(artifact.path).is_dir():
            mlflow.log_artifacts(artifact.path, artifact_path=artifact.artifact_path)
        else:
            mlflow.log_artifact(artifact.path, artifact_path=artifact.artifact_path)


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def active_run_env() -> dict[str, str]:
    """``MLFLOW_RUN_ID`` and ``MLFLOW_TRACKING_URI`` of the active run (for processes that log into it),
    or ``{}`` when no run is active."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return {}
    return {"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}


class RunLogger:
    """Logs step metrics and JSON artifacts into the run named by ``MLFLOW_RUN_ID`` (a training rank's
    view of its stage run); does nothing without one."""

    def __init__(self, enabled: bool = True) -> None:
        self.run_id = (os.environ.get("MLFLOW_RUN_ID") if enabled else None) or ""
        self.client = None
        if self.run_id:
            import mlflow

            self.client = mlflow.MlflowClient()

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Log ``values`` at ``step``."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_dict(self, content: dict[str, Any], artifact_file: str) -> None:
        """Log a JSON artifact."""
        if self.client is not None:
            self.client.log_dict(self.run_id, content, artifact_file)


def log_comparison(
    summary: ParentRun, rows: Sequence[Mapping[str, Any]], files: Sequence[Path], artifact_path: str
) -> None:
    """Log each row's numeric values on its run (``row["run_id"]``: MLflow's compare view) and ``files``
    on the summary run."""
    client = summary.client()
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float):
                client.log_metric(row["run_id"], name, value)
    for path in files:
        client.log_artifact(summary.run_id, str(path), artifact_path=artifact_path)
