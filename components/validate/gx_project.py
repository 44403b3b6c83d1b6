"""The Great Expectations 1.x file context in ``gx/``: data source, suite, checkpoint, Data Docs.

Committed under ``gx/``: ``great_expectations.yml`` (with the pandas data source ``codemill``, its
dataframe asset and batch definition), ``expectations/<suite>.json``, ``validation_definitions/<suite>.json``
and ``checkpoints/<suite>.json``. Runtime files (validation results, the Data Docs site) go to
``gx/uncommitted/`` (git-ignored) and are cleared at the start of each run, so the site shows that run only
(earlier sites are kept as MLflow artifacts). The data source objects are created once and then reused;
the suite, validation definition and checkpoint are saved each run, keeping their stored ids (the
expectations' ids derive from their content), so an unchanged suite leaves ``git status`` clean and a
params change shows up as a diff of the suite JSON.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

DATASOURCE = "codemill"
ASSET = "documents"
BATCH_DEFINITION = "all_documents"


def open_context(project_root: Path) -> AbstractDataContext:
    """The file context of ``project_root/gx`` (created on first use), with progress bars off."""
    context = gx.get_context(mode="file", project_root_dir=str(project_root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # saved with the data source
    return context


def batch_definition(context: AbstractDataContext) -> BatchDefinition:
    """The whole-dataframe batch definition, added only if missing (so the YAML is not rewritten)."""
    sources = context.data_sources.all()
    source: Any  # a PandasDatasource (GX types it as its base class)
    source = sources[DATASOURCE] if DATASOURCE in sources else context.data_sources.add_pandas(DATASOURCE)
    if ASSET in source.get_asset_names():
        asset = source.get_asset(ASSET)
    else:
        asset = source.add_dataframe_asset(ASSET)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def save_suite(context: AbstractDataContext, suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """Save ``suite`` keeping its expectation ids (GX keeps them on update only, so create it empty first).

    On update GX also keeps the stored suite's id, and the validation definition and checkpoint keep
    theirs: rewriting an unchanged suite writes the same bytes.
    """
    if suite.name not in {existing.name for existing in context.suites.all()}:
        context.suites.add(gx.ExpectationSuite(name=suite.name))
    return context.suites.add_or_update(suite)


def checkpoint_for(context: AbstractDataContext, suite: gx.ExpectationSuite, samples: int) -> gx.Checkpoint:
    """Save ``suite`` and a checkpoint that validates it on a dataframe and updates the Data Docs."""
    suite = save_suite(context, suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite.name, data=batch_definition(context), suite=suite)
    )
    checkpoint = gx.Checkpoint(
        name=suite.name,
        validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": samples},
    )
    return context.checkpoints.add_or_update(checkpoint)


def _runtime_dir(context: AbstractDataContext, config: dict) -> Path:
    return Path(context.root_directory or ".") / config["store_backend"]["base_directory"]


def data_docs_dir(context: AbstractDataContext) -> Path:
    """Where the local Data Docs site is built."""
    return _runtime_dir(context, (context.variables.data_docs_sites or {})["local_site"])


def clear_results(context: AbstractDataContext) -> None:
    """Remove earlier validation results and Data Docs, so the site shows this run only."""
    results_store = (context.variables.stores or {})[context.variables.validation_results_store_name]
    for directory in (_runtime_dir(context, results_store), data_docs_dir(context)):
        shutil.rmtree(directory, ignore_errors=True)


def record(
    context: AbstractDataContext,
    suite: gx.ExpectationSuite,
    result: ExpectationSuiteValidationResult,
    samples: int,
) -> None:
    """Save ``suite`` with its checkpoint, store ``result`` as this run's only validation, build Data Docs.

    The checkpoint validates one dataframe (run it by hand on a frame); the stage validates shard by
    shard (``sharded.py``) and stores the merged result under the same suite, so the site shows it as one
    validation.
    """
    clear_results(context)
    checkpoint = checkpoint_for(context, suite, samples)
    definition = checkpoint.validation_definitions[0]
    run_id = RunIdentifier(run_time=dt.datetime.now(dt.UTC))
    run_meta = {"run_id": run_id, "validation_time": run_id.run_time, "checkpoint_id": checkpoint.id}
    result.meta = {**result.meta, **run_meta, "validation_id": definition.id}
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=result.batch_id
    )
    context.validation_results_store.store_validation_results(result, key, suite_id)
    context.build_data_docs()
