"""The expectation suite (docs/data-recipe.md, "Quality checks"), built from params, and its failures as text.

| check | expectation (column) | when |
| --- | --- | --- |
| schema | ``expect_column_to_exist``, ``expect_column_values_to_be_of_type`` (each base column) | always |
| non-null | ``expect_column_values_to_not_be_null`` (each non-nullable base column) | always |
| size bounds | ``expect_column_values_to_be_between`` (``size_bytes``, ``validate.*_size_bytes``) | always |
| unique sha256 | ``expect_column_values_to_be_unique`` (``sha256``) | ``dedup.level`` exact or file |
| language set | ``expect_column_values_to_be_in_set`` (``lang``, ``ingest.languages``) | always |
| no residual PII | ``expect_column_values_to_be_in_set`` (``residual_pii``, ``[""]``) | ``clean.pii`` on |
| no contamination | ``expect_column_values_to_be_between`` (``benchmark_overlap``, 0, 0) | benchmarks set |

Expectation ids are derived from their content (uuid5), so rewriting an unchanged suite writes the same
bytes, and going back to earlier params restores the committed ``gx/expectations/<suite>.json`` exactly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import great_expectations as gx
import pyarrow as pa
from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.expectations import Expectation

from components.params.validate import ValidateJob
from components.shards import BASE_SCHEMA
from components.validate.signals import BENCHMARK_OVERLAP, RESIDUAL_PII, checks_benchmarks, pii_rules

#: dedup levels after which no two files share content (sha256 must be unique).
FILE_UNIQUE_LEVELS = ("exact", "file")

#: Namespace of the content-derived expectation ids.
ID_NAMESPACE = uuid.UUID("6f1c1a0e-5d0b-4c53-9a59-3d2f0c6e7a11")
#: The pandas dtype name GX observes for each Arrow type of the base schema (signals.load_shard).
PANDAS_TYPE_NAMES = {pa.string(): "str", pa.int64(): "int64"}
E = gx.expectations


def schema_expectations() -> list[Expectation]:
    """Every base column exists, has its type, and holds no nulls unless nullable."""
    expectations: list[Expectation] = []
    for field in BASE_SCHEMA:
        expectations.append(E.ExpectColumnToExist(column=field.name))
        expectations.append(
            E.ExpectColumnValuesToBeOfType(column=field.name, type_=PANDAS_TYPE_NAMES[field.type])
        )
        if not field.nullable:
            expectations.append(E.ExpectColumnValuesToNotBeNull(column=field.name))
    return expectations


def content_expectations(job: ValidateJob) -> list[Expectation]:
    """Size bounds, unique sha256 after dedup, the language set, no residual PII, no benchmark overlap."""
    config = job.validate_
    expectations: list[Expectation] = [
        E.ExpectColumnValuesToBeBetween(
            column="size_bytes",
            min_value=config.min_size_bytes,
            max_value=config.max_size_bytes,
            description="validate.min_size_bytes <= size_bytes <= validate.max_size_bytes",
        ),
        E.ExpectColumnValuesToBeInSet(
            column="lang",
            value_set=job.languages,
            description="languages ingest emits (ingest.languages, ingest.extensions)",
        ),
    ]
    # Only file-level dedup promises unique files: `none` keeps duplicates, and `repo` (OpenCoder) removes
    # duplicate repos but keeps copies of a file across different repos.
    if job.dedup_level in FILE_UNIQUE_LEVELS:
        expectations.append(
            E.ExpectColumnValuesToBeUnique(
                column="sha256", description=f"no exact duplicates after dedup (level {job.dedup_level})"
            )
        )
    rules = pii_rules(job)
    if rules:
        expectations.append(
            E.ExpectColumnValuesToBeInSet(
                column=RESIDUAL_PII,
                value_set=[""],
                description=f"clean's PII rules {', '.join(rules)} find nothing (components/clean/pii.py)",
            )
        )
    if checks_benchmarks(job):
        expectations.append(
            E.ExpectColumnValuesToBeBetween(
                column=BENCHMARK_OVERLAP,
                min_value=0,
                max_value=0,
                description="no document contains a benchmark prompt or solution (clean.decontam)",
            )
        )
    return expectations


def _content_id(*parts: object) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps(parts, sort_keys=True, default=str)))


def build_suite(job: ValidateJob) -> gx.ExpectationSuite:
    """The suite for ``job``; expectation ids derive from content (same params -> same JSON)."""
    name = job.validate_.suite
    expectations = [*schema_expectations(), *content_expectations(job)]
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    for expectation in suite.expectations:
        expectation.id = _content_id(name, expectation.expectation_type, expectation.configuration.kwargs)
    return suite


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what it checked, how many rows broke it, and some of them."""

    expectation: str
    column: str | None
    kwargs: dict[str, object]
    unexpected_count: int | None
    element_count: int | None
    samples: list[tuple[object, object]]  # (document, value)
    error: str | None

    def describe(self) -> str:
        """One line (plus sample lines) naming the expectation, its arguments and the offending values."""
        arguments = ", ".join(f"{key}={_shown(value)}" for key, value in self.kwargs.items())
        head = f"{self.expectation}(column={self.column!r}" + (f", {arguments})" if arguments else ")")
        if self.error:
            return f"{head}: error: {self.error}"
        if self.unexpected_count is None:
            return f"{head}: failed"
        lines = [f"{head}: {self.unexpected_count} of {self.element_count} values unexpected"]
        lines += [f"      {document}: {_shown(value)}" for document, value in self.samples]
        return "\n".join(lines)


def _plain(value: object) -> object:
    """NumPy scalars as Python values, integral floats as ints (GX stores bounds as floats)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shown(value: object, limit: int = 120) -> str:
    text = repr(_plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_message(exception_info: dict) -> str | None:
    """The first exception message of a result (GX nests them per metric when a metric fails)."""
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [info.get("exception_message") for info in infos if isinstance(info, dict)]
    return next((message for message in messages if message), None)


def failures(result: ExpectationSuiteValidationResult, suite: gx.ExpectationSuite) -> list[Failure]:
    """The failed expectations of a validation result, in suite order (missing columns first)."""
    order = {expectation.id: index for index, expectation in enumerate(suite.expectations)}
    failed = [(item, item.expectation_config) for item in result.results if not item.success]
    found = []
    failed.sort(key=lambda pair: order.get(pair[1].id if pair[1] else None, len(order)))
    for item, config in failed:
        if config is None:
            continue
        kwargs = {key: value for key, value in config.kwargs.items() if key not in ("batch_id", "column")}
        details = item.result or {}
        values = details.get("partial_unexpected_list") or []
        documents = details.get("partial_unexpected_index_list") or ["?"] * len(values)
        found.append(
            Failure(
                expectation=config.type,
                column=config.kwargs.get("column"),
                kwargs=kwargs,
                unexpected_count=details.get("unexpected_count"),
                element_count=details.get("element_count"),
                samples=list(zip(documents, values, strict=False)),
                error=_error_message(item.exception_info or {}),
            )
        )
    return found


def failure_message(suite: str, source: str, found: Iterable[Failure], evaluated: int) -> str:
    """The StageError text: the suite, the data, and each failing expectation with sample values."""
    found = list(found)
    lines = [f"{source}: expectation suite {suite!r} failed {len(found)} of {evaluated} expectations:"]
    lines += [f"  - {failure.describe()}" for failure in found]
    return "\n".join(lines)
