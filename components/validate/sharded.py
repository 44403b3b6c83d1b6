"""Validate shard by shard and merge the verdicts into one suite result (memory bounded by a shard).

Every expectation of the suite but one kind is a property of single rows (types, nulls, bounds, sets), so
each shard is validated on its own, in a worker (:func:`check_shard`, with an in-memory GX context), and
the per-shard results are merged (:func:`merge_results`): an expectation holds when it holds on every
shard, counts add up, percentages are recomputed from the sums, and the samples are the first shards'.
Uniqueness (``expect_column_values_to_be_unique``) is a property of the corpus: the workers send back
that column alone (a sha256 and a label per document, ~100 bytes), and the stage validates it on their
concatenation. So a worker holds one shard and the stage holds the key column, never the content; the
verdict is the one Great Expectations gives on the whole corpus as one dataframe (``tests/test_validate.py``
checks it against the committed checkpoint run on the concatenated frame).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.data_context.types.base import ProgressBarsConfig

from components.executor import map_shards
from components.params.shared import ExecutorConfig
from components.validate.gx_project import ASSET, BATCH_DEFINITION, DATASOURCE
from components.validate.signals import ShardTask, content_bytes, load_shard

#: Expectations that compare rows with each other: validated once, on the corpus's column.
CORPUS_WIDE = frozenset({"expect_column_values_to_be_unique"})
#: Count fields of a column-map result, summed over shards.
COUNTS = ("element_count", "unexpected_count", "missing_count")
#: List fields of a result, concatenated over shards and cut to the sample count.
SAMPLE_LISTS = ("partial_unexpected_list", "partial_unexpected_index_list")


@dataclass(frozen=True)
class ShardCheck:
    """One shard to validate against the per-shard part of the suite (as its JSON dict)."""

    task: ShardTask
    suite: dict[str, Any]
    samples: int
    #: Columns of corpus-wide expectations, sent back whole (indexed by document).
    key_columns: tuple[str, ...]

    @property
    def shard(self) -> str:
        """The shard's path (names the shard in executor errors)."""
        return self.task.path


@dataclass
class ShardVerdict:
    """What a worker sends back: the shard's results in suite order, its size, and its key columns."""

    results: list[ExpectationValidationResult]
    documents: int
    content_bytes: int
    keys: pd.DataFrame
    meta: dict[str, Any]


def split_suite(suite: gx.ExpectationSuite) -> tuple[gx.ExpectationSuite, gx.ExpectationSuite]:
    """The suite's per-shard expectations and its corpus-wide ones, as two suites of the same name."""
    configs = [expectation.configuration.to_json_dict() for expectation in suite.expectations]
    per_shard = [config for config in configs if config["type"] not in CORPUS_WIDE]
    corpus_wide = [config for config in configs if config["type"] in CORPUS_WIDE]
    return (
        gx.ExpectationSuite(name=suite.name, expectations=per_shard),
        gx.ExpectationSuite(name=suite.name, expectations=corpus_wide),
    )


@functools.cache
def _batch_definition() -> BatchDefinition:
    """A whole-dataframe batch definition in an in-memory context (one per process), named as the file
    context's, so the stored result's batch id is the file context's."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(DATASOURCE).add_dataframe_asset(ASSET)
    return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def validate_frame(
    frame: pd.DataFrame, suite: gx.ExpectationSuite, samples: int
) -> ExpectationSuiteValidationResult:
    """``suite`` on ``frame``, with ``samples`` unexpected values (and their row labels) per expectation."""
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": samples}
    )


def check_shard(check: ShardCheck) -> ShardVerdict:
    """Load one shard (with its derived columns) and validate it; module-level for ``map_shards``."""
    frame = load_shard(check.task)
    suite = gx.ExpectationSuite(**check.suite)
    result = validate_frame(frame, suite, check.samples) if suite.expectations else None
    keys = frame[[column for column in check.key_columns if column in frame.columns]]
    results, meta = (list(result.results), dict(result.meta)) if result else ([], {})
    return ShardVerdict(results, len(frame), content_bytes(frame), keys, meta)


def _raised(exception_info: dict[str, Any] | None) -> bool:
    """Whether a result's ``exception_info`` (flat, or per metric) records a raised exception."""
    if not exception_info:
        return False
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    return any(isinstance(info, dict) and info.get("raised_exception") for info in infos)


def _percent(part: int, whole: int) -> float | None:
    return part / whole * 100 if whole > 0 else None


def _merged_counts(details: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """A column-map result of several shards: counts summed, percentages as GX computes them, samples."""
    totals = {name: sum(int(d.get(name) or 0) for d in details) for name in COUNTS}
    element, unexpected, missing = (totals[name] for name in COUNTS)
    merged: dict[str, Any] = {"element_count": element, "unexpected_count": unexpected}
    has_missing = any("missing_count" in d for d in details)
    nonmissing = element - missing if has_missing else element
    merged["unexpected_percent"] = _percent(unexpected, nonmissing) if element else None
    for name in SAMPLE_LISTS:
        if any(name in d for d in details):
            merged[name] = [value for d in details for value in d.get(name) or []][:samples]
    if has_missing:
        merged.update(
            missing_count=missing,
            missing_percent=_percent(missing, element),
            unexpected_percent_total=_percent(unexpected, element),
            unexpected_percent_nonmissing=_percent(unexpected, nonmissing) if element else None,
        )
    if any("partial_unexpected_counts" in d for d in details):
        counts: Counter[Any] = Counter()
        for d in details:
            for entry in d.get("partial_unexpected_counts") or []:
                counts[entry["value"]] += entry["count"]
        merged["partial_unexpected_counts"] = [
            {"value": value, "count": count} for value, count in counts.most_common(samples)
        ]
    return merged


def merge_results(
    results: Sequence[ExpectationValidationResult], samples: int
) -> ExpectationValidationResult:
    """One expectation's results on several shards as its result on their union."""
    first = results[0]
    details = [result.result or {} for result in results]
    failing = next((result for result in results if not result.success), first)
    if any("element_count" in d for d in details):
        merged = _merged_counts(details, samples)
    else:  # an aggregate result (e.g. the observed dtype): the first failing shard's
        merged = dict(failing.result or {})
    raised = next((result for result in results if _raised(result.exception_info)), None)
    return ExpectationValidationResult(
        success=all(result.success for result in results),
        expectation_config=first.expectation_config,
        result=merged,
        meta=first.meta,
        exception_info=(raised or failing).exception_info,
    )


@dataclass
class ShardedValidation:
    """The merged suite result, and the corpus's size."""

    result: ExpectationSuiteValidationResult
    documents: int
    content_bytes: int
    shards: int


def suite_result(
    suite: gx.ExpectationSuite, results: Sequence[ExpectationValidationResult], meta: dict[str, Any]
) -> ExpectationSuiteValidationResult:
    """A suite result of ``results`` (put in suite order), with GX's statistics."""
    order = {expectation.id: index for index, expectation in enumerate(suite.expectations)}
    ordered = sorted(results, key=lambda result: order[getattr(result.expectation_config, "id", None)])
    passed = sum(bool(result.success) for result in ordered)
    return ExpectationSuiteValidationResult(
        success=passed == len(ordered),
        results=ordered,
        suite_name=suite.name,
        statistics={
            "evaluated_expectations": len(ordered),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(ordered) - passed,
            "success_percent": _percent(passed, len(ordered)),
        },
        meta=meta,
        batch_id=f"{DATASOURCE}-{ASSET}",
    )


def validate_shards(
    tasks: Sequence[ShardTask], suite: gx.ExpectationSuite, samples: int, executor: ExecutorConfig
) -> ShardedValidation:
    """Validate every shard of ``tasks`` on ``executor`` and merge the verdicts into one suite result."""
    per_shard, corpus_wide = split_suite(suite)
    key_columns = tuple(sorted({str(e.configuration.kwargs["column"]) for e in corpus_wide.expectations}))
    checks = [ShardCheck(task, per_shard.to_json_dict(), samples, key_columns) for task in tasks]
    verdicts = map_shards(check_shard, checks, executor)
    results = [
        merge_results([verdict.results[index] for verdict in verdicts], samples)
        for index in range(len(per_shard.expectations))
    ]
    meta: dict[str, Any] = {**verdicts[0].meta, "shards": len(tasks)}
    if corpus_wide.expectations:
        keys = pd.concat([verdict.keys for verdict in verdicts])
        wide = validate_frame(keys, corpus_wide, samples)
        results += wide.results
        meta = {**wide.meta, "shards": len(tasks)}
    return ShardedValidation(
        result=suite_result(suite, results, meta),
        documents=sum(verdict.documents for verdict in verdicts),
        content_bytes=sum(verdict.content_bytes for verdict in verdicts),
        shards=len(tasks),
    )
