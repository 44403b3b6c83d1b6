"""The clean stage: drop files that contain benchmark problems, then redact PII in the rest.

Per shard (1 input shard -> 1 output shard of the same name, via ``map_shards``):

1. decontamination (components/clean/decontam.py) on the original content: a file containing a
   benchmark prompt or solution is dropped and listed in the report (reason ``exact_substring`` or
   ``ngram_overlap``);
2. PII redaction (components/clean/pii.py) of the kept files: content, ``size_bytes`` and ``sha256``
   are updated and ``pii_count`` (int64, redactions in the document) is added.

Report metrics: ``pii.<kind>`` (email, ip_address, key), ``pii.total``, ``pii.docs`` (documents with at
least one redaction), ``decontam.dropped``; details: per-rule counts, the benchmarks, the dropped files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from components.clean import decontam, pii
from components.clean.config import CleanConfig
from components.errors import StageError
from components.report import ShardCounts, StageReport
from components.shards import (
    atomic_output_dir,
    content_sha256,
    list_shards,
    read_shard,
    table_bytes,
    write_shard,
)

if TYPE_CHECKING:  # components.config imports components.clean.config: no runtime import back
    from components.config import Params
    from components.stage import StageIO

PII_COUNT = pa.field("pii_count", pa.int64(), nullable=False)


@dataclass(frozen=True)
class ShardTask:
    """One shard to clean: where it is, where it goes, with which settings."""

    source: str
    target: str
    config: CleanConfig


@dataclass
class ShardResult(ShardCounts):
    """What cleaning one shard did (summed over shards into the report)."""

    pii_rules: Counter[str] = field(default_factory=Counter)
    pii_docs: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The input schema with ``pii_count`` appended (or replaced, when cleaning cleaned data again)."""
    index = schema.get_field_index(PII_COUNT.name)
    return schema.set(index, PII_COUNT) if index >= 0 else schema.append(PII_COUNT)


def clean_shard(task: ShardTask) -> ShardResult:
    """Decontaminate and redact one shard and write it to ``task.target`` (same rows order)."""
    table = read_shard(task.source)
    result = ShardResult(files_in=table.num_rows, bytes_in=table_bytes(table))
    index = decontam.benchmark_index(task.config.decontam) if _decontam_enabled(task.config) else None
    rules = pii.rules_for(task.config.pii.kinds) if task.config.pii.enabled else ()
    keep, contents, counts = [], [], []
    for row, (doc_id, repo, path, content) in enumerate(
        zip(*(table[name].to_pylist() for name in ("id", "repo", "path", "content")), strict=True)
    ):
        found = index.first_contamination(content) if index is not None else None
        if found is not None:
            result.drops[found.reason] += 1
            result.dropped.append(
                {
                    "id": doc_id,
                    "repo": repo,
                    "path": path,
                    "benchmark": found.benchmark,
                    "task_id": found.task_id,
                    "reason": found.reason,
                }
            )
            continue
        redacted, rule_counts = pii.redact(content, rules)
        keep.append(row)
        contents.append(redacted)
        counts.append(rule_counts.total())
        result.pii_rules += rule_counts
        result.pii_docs += bool(rule_counts)
    cleaned = _cleaned_table(table.take(pa.array(keep, pa.int64())), contents, counts)
    write_shard(cleaned, task.target)
    result.files_out, result.bytes_out = cleaned.num_rows, table_bytes(cleaned)
    return result


def _cleaned_table(kept: pa.Table, contents: list[str], counts: list[int]) -> pa.Table:
    """``kept`` with the redacted content, its size and hash, and ``pii_count``."""
    schema = output_schema(kept.schema)
    columns = {
        "content": pa.array(contents, pa.string()),
        "size_bytes": pa.array([len(text.encode("utf-8")) for text in contents], pa.int64()),
        "sha256": pa.array([content_sha256(text) for text in contents], pa.string()),
        PII_COUNT.name: pa.array(counts, pa.int64()),
    }
    arrays = [columns[name] if name in columns else kept.column(name) for name in schema.names]
    return pa.Table.from_arrays(arrays, schema=schema)


def _decontam_enabled(config: CleanConfig) -> bool:
    return config.decontam.include_humaneval or bool(config.decontam.benchmarks)


def run(params: Params, io: StageIO) -> StageReport:
    """Drop files containing benchmark problems (HumanEval + listed files); redact emails, IPs and keys."""
    from components.executor import map_shards  # imports components.config, which imports this package

    if len(io.inputs) != 1 or not io.output:
        raise StageError("clean needs exactly one --input directory and an --output directory")
    config = params.clean
    report = StageReport(stage="clean")
    if _decontam_enabled(config):
        index = decontam.benchmark_index(config.decontam)  # here first: a bad benchmark file fails early
        report.details["benchmarks"] = dict(Counter(problem.benchmark for problem in index.problems))
        report.details["benchmark_strings"] = len(index.needles)
        report.details["benchmark_ngrams"] = len(index.ngrams)
    sources = list_shards(io.inputs[0])
    with atomic_output_dir(io.output) as staging:
        tasks = [ShardTask(source, f"{staging}/{PurePosixPath(source).name}", config) for source in sources]
        results = map_shards(clean_shard, tasks, params.executor)
    _fill_report(report, results, config)
    return report


def _fill_report(report: StageReport, results: list[ShardResult], config: CleanConfig) -> None:
    rule_counts: Counter[str] = Counter()
    report.merge_drops(dict.fromkeys(decontam.DROP_REASONS, 0))
    dropped: list[dict[str, Any]] = []
    for result in results:
        report.add_counts(result)
        rule_counts += result.pii_rules
        dropped += result.dropped
    by_kind = pii.counts_by_kind(rule_counts)
    report.metrics.update({f"pii.{kind}": float(n) for kind, n in by_kind.items()})
    report.metrics["pii.total"] = float(sum(by_kind.values()))
    report.metrics["pii.docs"] = float(sum(result.pii_docs for result in results))
    report.metrics["decontam.dropped"] = float(len(dropped))
    report.details["pii_kinds"] = list(config.pii.kinds) if config.pii.enabled else []
    report.details["pii_rules"] = {name: rule_counts[name] for name in pii.RULE_NAMES}
    report.details["dropped"] = dropped
