"""The validate stage: Great Expectations 1.x quality checks on the cleaned shards (docs/data-recipe.md).

Each shard is validated on its own in a worker (``sharded.py``: base columns plus the derived
``residual_pii`` and ``benchmark_overlap`` columns of ``signals.py``), and the per-shard verdicts are merged
into one suite result; sha256 uniqueness, a property of the whole corpus, is validated on the ``sha256``
column the workers send back. A worker holds one shard and the stage holds one key column, so memory is
bounded by the shard size (``data.shard_bytes``), not the corpus; the verdict is the one of the whole
corpus as one dataframe.

The suite (``suite.py``) is saved in the committed file context ``gx/`` of the working directory (the
project root under ``dvc repro``) with its checkpoint, and the merged result is stored there as the run's
validation (``gx_project.py``). The Data Docs site of the run is copied to the stage output
(``reports/data_docs``) and logged to the active MLflow run under ``data_docs/``, also when the suite
fails; then a :class:`StageError` lists every failing expectation with sample unexpected values, so
``dvc repro`` stops with that message.
"""

from __future__ import annotations

from pathlib import Path

from components.errors import StageError
from components.params import StageContext
from components.params.validate import ValidateJob
from components.report import Artifact, StageReport
from components.shards import atomic_output_dir, filesystem, list_shards
from components.stage_runner import Input, Stage, StageIO
from components.validate.offline import ship_assets
from components.validate.signals import ShardTask, checks_benchmarks, pii_rules


def shard_tasks(directory: str, job: ValidateJob) -> list[ShardTask]:
    """One task per shard of ``directory``: the PII rules to re-run and the benchmarks to look for."""
    decontam = job.clean.decontam if checks_benchmarks(job) else None
    benchmarks = tuple(job.benchmarks)
    return [ShardTask(path, pii_rules(job), decontam, benchmarks) for path in list_shards(directory)]


def copy_tree(source: Path, destination: str) -> int:
    """Copy the files under local ``source`` to ``destination`` (local or s3://); returns the file count."""
    fs, root = filesystem(destination)
    files = sorted(path for path in source.rglob("*") if path.is_file())
    for path in files:
        target = f"{root.rstrip('/')}/{path.relative_to(source).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
    return len(files)


def run(job: ValidateJob, context: StageContext, io: StageIO) -> StageReport:
    """Validate the cleaned shards with the Great Expectations suite and write its Data Docs."""
    # Imported here: Great Expectations takes ~3 s to import; importing the stage module stays cheap.
    from components.validate import gx_project
    from components.validate.sharded import validate_shards
    from components.validate.suite import build_suite, failure_message, failures

    source = io.input("documents")
    output = io.require_output("validate")
    tasks = shard_tasks(source, job)
    suite = build_suite(job)
    checked = validate_shards(tasks, suite, job.validate_.samples, context.executor)
    if checked.documents == 0:  # every expectation holds vacuously on nothing: that is not a pass
        raise StageError(
            f"validate: {source} holds no document ({checked.shards} empty shard(s)); nothing to validate. "
            "The earlier stages dropped everything: see their reports and `codemill inspect STAGE`."
        )
    gx_context = gx_project.open_context(Path.cwd())
    validation = checked.result
    gx_project.record(gx_context, suite, validation, job.validate_.samples)
    found = failures(validation, suite)

    docs = gx_project.data_docs_dir(gx_context)
    ship_assets(docs)  # GX's CDN assets, shipped: the report reads the same offline
    with atomic_output_dir(output) as tmp:
        docs_files = copy_tree(docs, tmp)

    evaluated = int(validation.statistics["evaluated_expectations"])
    report = StageReport(stage="validate", files_in=checked.documents, bytes_in=checked.content_bytes)
    report.metrics.update(
        {
            "expectations_evaluated": evaluated,
            "expectations_failed": len(found),
            "success": float(validation.success),
        }
    )
    report.details.update(
        {
            "suite": suite.name,
            "shards": checked.shards,
            "data_docs": f"{output.rstrip('/')}/index.html",
            "data_docs_files": docs_files,
            "failures": [failure.describe() for failure in found],
        }
    )
    report.artifacts.append(Artifact(str(docs), "data_docs"))
    if found:  # the run fails, and its Data Docs are logged to it all the same
        raise StageError(failure_message(suite.name, source, found, evaluated), artifacts=report.artifacts)
    return report


STAGE = Stage("validate", run, inputs=(Input("documents"),))

__all__ = ["STAGE", "run"]
