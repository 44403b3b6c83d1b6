"""The clean stage: drop files that contain benchmark problems, then redact PII in the rest.

Per shard (1 input shard -> 1 output shard of the same name, via ``map_shards``):

1. decontamination (components/clean/decontam.py) on the original content: a file containing a
   benchmark prompt or solution is dropped (reason ``exact_substring`` or ``ngram_overlap``) and goes,
   with the benchmark problem it contains, to ``data/clean.excluded``;
2. PII redaction (components/clean/pii.py) of the kept files: content, ``size_bytes`` and ``sha256``
   are updated and ``pii_count`` (int64, redactions in the document) is added.

Report metrics: ``pii.<kind>`` (email, ip_address, key), ``pii.total``, ``pii.docs`` (documents with at
least one redaction), ``decontam.dropped``; details: per-rule counts and the benchmarks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from components.clean import decontam, pii
from components.corpus_stats import language_breakdown, stage_statistics
from components.params import StageContext
from components.params.clean import CleanJob
from components.report import ShardResult, StageReport
from components.shards import content_sha256, list_shards, read_shard, table_bytes, write_shard
from components.stage_runner import (
    Exclusions,
    Input,
    Stage,
    StageIO,
    run_shards,
    shard_outputs,
    summed_counters,
)

PII_COUNT = pa.field("pii_count", pa.int64(), nullable=False)
EXCLUDED_COLUMNS = ["id", "repo", "path", "lang", "content", "size_bytes"]


@dataclass(frozen=True)
class ShardTask:
    """One shard to clean: where it is, where it and its dropped documents go, with which settings."""

    source: str
    target: str
    excluded: str
    job: CleanJob


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The input schema with ``pii_count`` appended (or replaced, when cleaning cleaned data again)."""
    index = schema.get_field_index(PII_COUNT.name)
    return schema.set(index, PII_COUNT) if index >= 0 else schema.append(PII_COUNT)


def clean_shard(task: ShardTask) -> ShardResult:
    """Decontaminate and redact one shard and write it to ``task.target`` (same rows order).

    Counters: ``pii.rule.<rule>`` (redactions per rule) and ``pii.docs`` (documents with any).
    """
    table = read_shard(task.source)
    result = ShardResult(files_in=table.num_rows, bytes_in=table_bytes(table))
    excluded = Exclusions()
    config = task.job.clean
    index = None
    if _decontam_enabled(task.job):
        index = decontam.benchmark_index(config.decontam, task.job.benchmarks)
    rules = pii.rules_for(config.pii.kinds) if config.pii.enabled else ()
    keep, contents, counts = [], [], []
    for row, content in enumerate(table["content"].to_pylist()):
        found = index.first_contamination(content) if index is not None else None
        if found is not None:
            document = {name: table[name][row].as_py() for name in EXCLUDED_COLUMNS}
            excluded.drop(found.reason, document, f"{found.benchmark} {found.task_id}")
            continue
        redacted, rule_counts = pii.redact(content, rules)
        keep.append(row)
        contents.append(redacted)
        counts.append(rule_counts.total())
        result.counters.update({f"pii.rule.{name}": n for name, n in rule_counts.items()})
        result.counters["pii.docs"] += bool(rule_counts)
    cleaned = _cleaned_table(table.take(pa.array(keep, pa.int64())), contents, counts)
    write_shard(cleaned, task.target)
    excluded.write(task.excluded)
    result.drops = excluded.counts
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


def _decontam_enabled(job: CleanJob) -> bool:
    return job.clean.decontam.enabled and bool(job.benchmarks)


def run(job: CleanJob, context: StageContext, io: StageIO) -> StageReport:
    """Drop files containing a problem of ``evaluate.benchmarks``; redact emails, IPs and keys."""
    config = job.clean
    report = StageReport(stage="clean")
    report.merge_drops(dict.fromkeys(decontam.DROP_REASONS, 0))
    if _decontam_enabled(job):
        index = decontam.benchmark_index(config.decontam, job.benchmarks)  # a bad file fails here, early
        report.details["benchmarks"] = dict(Counter(problem.benchmark for problem in index.problems))
        report.details["benchmark_strings"] = len(index.needles)
        report.details["benchmark_ngrams"] = len(index.ngrams)
    sources = list_shards(io.input("documents"))
    with shard_outputs(io.require_output("clean")) as out:
        tasks = [ShardTask(source, out.shard(source), out.exclusions(source), job) for source in sources]
        results = run_shards(clean_shard, tasks, context, report)
        report.details["languages"] = language_breakdown(out.output, out.excluded)
    counters = summed_counters(results)
    rule_counts = Counter({name: int(counters[f"pii.rule.{name}"]) for name in pii.RULE_NAMES})
    by_kind = pii.counts_by_kind(rule_counts)
    report.metrics.update({f"pii.{kind}": float(n) for kind, n in by_kind.items()})
    report.metrics["pii.total"] = float(sum(by_kind.values()))
    report.metrics["pii.docs"] = float(counters["pii.docs"])
    report.metrics["decontam.dropped"] = float(sum(report.drops[reason] for reason in decontam.DROP_REASONS))
    report.details["pii_kinds"] = list(config.pii.kinds) if config.pii.enabled else []
    report.details["pii_rules"] = dict(rule_counts)
    return report


STAGE = Stage("clean", run, inputs=(Input("documents"),), statistics=stage_statistics)

__all__ = ["PII_COUNT", "STAGE", "run"]
