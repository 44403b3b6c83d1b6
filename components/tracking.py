"""MLflow conventions (design.md §2): the one module that decides how runs are named, nested and tagged.

- One experiment per project; one *parent* run per pipeline run; one nested run per stage.
- The parent is the run named by ``CODEMILL_PARENT_RUN_ID`` (set by the Prefect flow). Under a plain
  ``dvc repro`` the first stage that runs creates it, and later stages of the same ``dvc`` invocation
  find it again through ``.codemill/pipeline_run.json`` (keyed by the ``dvc`` process).
- Every stage run is tagged with the git commit, dirty flag, DVC experiment name, stage name, the
  DVC md5 of each output (the value ``dvc.lock`` records), and logs its params flattened (``dedup.level``).
- Input and output datasets are logged with ``mlflow.log_input`` and their DVC md5 as digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from components.config import Params, flatten
from components.report import StageReport

PARENT_RUN_ENV = "CODEMILL_PARENT_RUN_ID"
SESSION_FILE = Path(".codemill") / "pipeline_run.json"

TAG_KIND = "codemill.kind"
TAG_STAGE = "codemill.stage"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DVC_EXP = "dvc.exp_name"
TAG_OUT_MD5 = "dvc.md5"  # + ".<output path>"


def tracking_uri(params: Params, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` with a relative sqlite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str((root or Path.cwd()) / uri[len(prefix) :])
    return uri


def configure(params: Params, root: Path | None = None) -> str:
    """Point MLflow at the tracking URI and the project's experiment; returns the experiment id."""
    import mlflow

    root = root or Path.cwd()
    mlflow.set_tracking_uri(tracking_uri(params, root))
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    location = params.tracking.artifact_location
    if "://" not in location:
        location = (root / location).resolve().as_uri()
    experiment_id = mlflow.create_experiment(params.tracking.experiment, artifact_location=location)
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


def run_tags(stage: str | None = None) -> dict[str, str]:
    """Tags every codemill run carries: git state, DVC experiment name, and the stage if any."""
    tags = git_state()
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


def parent_run_id(experiment_id: str) -> str:
    """The id of this pipeline run's parent MLflow run, creating it if needed (see module docstring)."""
    import mlflow

    from_env = os.environ.get(PARENT_RUN_ENV)
    if from_env:
        return from_env
    client = mlflow.MlflowClient()
    session = {
        "key": _dvc_session_key(),
        "tracking_uri": mlflow.get_tracking_uri(),
        "experiment_id": experiment_id,
    }
    if SESSION_FILE.exists():
        with contextlib.suppress(ValueError, KeyError, mlflow.exceptions.MlflowException):
            recorded = json.loads(SESSION_FILE.read_text())
            if {key: recorded[key] for key in session} == session:
                return client.get_run(recorded["run_id"]).info.run_id  # raises if it is gone
    tags = {TAG_KIND: "pipeline", **run_tags()}
    run = client.create_run(experiment_id, tags=tags, run_name="pipeline")
    client.set_terminated(run.info.run_id)
    SESSION_FILE.parent.mkdir(parents=True, exist_ok=True)
    SESSION_FILE.write_text(json.dumps({**session, "run_id": run.info.run_id}))
    return run.info.run_id


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The params a stage depends on, flattened with dotted keys (``dedup.level``)."""
    dumped = params.model_dump(by_alias=True, mode="json")
    shared = {key: dumped[key] for key in ("project", "data", "executor")}
    section = {stage: dumped[stage]} if stage in dumped else {}
    return flatten({**shared, **section})


def _log_dataset(path: str, context: str, digest: str) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = path if "://" in path else Path(path).resolve().as_uri()
    # MLflow registers the local source twice; pick the first candidate explicitly to avoid a warning.
    candidates = [s for s in get_registered_sources() if s._can_resolve(uri)][:1] or None
    dataset = MetaDataset(resolve_dataset_source(uri, candidates), name=path, digest=digest[:36])
    mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def stage_run(stage: str, params: Params) -> Iterator[str]:
    """Open the nested MLflow run of ``stage`` under the pipeline's parent run; yields its run id."""
    import mlflow

    experiment_id = configure(params)
    parent = parent_run_id(experiment_id)
    with (
        mlflow.start_run(run_id=parent),
        mlflow.start_run(run_name=stage, nested=True, tags=run_tags(stage)) as run,
    ):
        mlflow.log_params(stage_params(params, stage))
        yield run.info.run_id


def log_stage_result(report: StageReport, report_path: str, inputs: list[str], outputs: list[str]) -> None:
    """Log a finished stage to the active run: metrics, the report file, datasets and output md5 tags."""
    import mlflow

    mlflow.log_metrics(report.numeric_metrics())
    mlflow.log_artifact(report_path, artifact_path="reports")
    for path in inputs:
        _log_dataset(path, "input", dvc_md5(path))
    for path in outputs:
        digest = dvc_md5(path)
        _log_dataset(path, "output", digest)
        # MLflow rejects "//" in tag names: an s3:// output is tagged dvc.md5.s3:/bucket/prefix.
        mlflow.set_tag(f"{TAG_OUT_MD5}.{path.replace('://', ':/')}", digest)
