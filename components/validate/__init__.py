"""The validate stage: Great Expectations 1.x quality checks on the cleaned shards (docs/data-recipe.md).

Shards are loaded in parallel (``signals.load_shard``: base columns plus the derived ``residual_pii`` and
``benchmark_overlap`` columns) and validated as one dataframe, because sha256 uniqueness is a property of
the whole corpus. Memory is about twice the content of the corpus (~30 MB of code at our scale); a corpus
that outgrows one process would validate per-row expectations shard by shard and uniqueness on the
``sha256`` column alone.

The suite (``suite.py``) is saved in the committed file context ``gx/`` of the working directory (the
project root under ``dvc repro``) and run through a checkpoint (``gx_project.py``). The Data Docs site of
the run is copied to the stage output (``reports/data_docs``) and logged to the active MLflow run under
``data_docs/``, also when the suite fails; then a :class:`StageError` lists every failing expectation with
sample unexpected values, so ``dvc repro`` stops with that message.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.errors import StageError
from components.executor import map_shards
from components.params import StageContext
from components.params.validate import ValidateJob
from components.report import Artifact, StageReport
from components.shards import atomic_output_dir, filesystem, list_shards
from components.stage_runner import Input, Stage, StageIO
from components.validate.signals import ShardTask, checks_benchmarks, content_bytes, load_shard, pii_rules


def load_documents(directory: str, job: ValidateJob, context: StageContext) -> tuple[pd.DataFrame, int]:
    """All shards of ``directory`` as one frame with the derived columns; also the number of shards."""
    decontam = job.clean.decontam if checks_benchmarks(job) else None
    benchmarks = tuple(job.benchmarks)
    tasks = [ShardTask(path, pii_rules(job), decontam, benchmarks) for path in list_shards(directory)]
    frames = map_shards(load_shard, tasks, context.executor)
    return pd.concat(frames), len(tasks)


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
    # Imported here: Great Expectations takes ~3 s to import and worker processes do not need it.
    from components.validate import gx_project
    from components.validate.suite import build_suite, failure_message, failures

    source = io.input("documents")
    output = io.require_output("validate")
    frame, shards = load_documents(source, job, context)
    if frame.empty:  # every expectation holds vacuously on nothing: that is not a pass
        raise StageError(
            f"validate: {source} holds no document ({shards} empty shard(s)); nothing to validate. "
            "The earlier stages dropped everything: see their reports and `codemill inspect STAGE`."
        )
    suite = build_suite(job)
    gx_context = gx_project.open_context(Path.cwd())
    result = gx_project.validate(gx_context, suite, frame, job.validate_.samples)
    validation = next(iter(result.run_results.values()))
    found = failures(validation, suite)

    docs = gx_project.data_docs_dir(gx_context)
    with atomic_output_dir(output) as tmp:
        docs_files = copy_tree(docs, tmp)

    evaluated = int(validation.statistics["evaluated_expectations"])
    report = StageReport(stage="validate", files_in=len(frame), bytes_in=content_bytes(frame))
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
            "shards": shards,
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
