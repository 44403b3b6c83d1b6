"""The ingest stage: read the configured sources into Parquet shards of documents (BASE_SCHEMA).

Sources (``ingest.sources``) are listed first (:mod:`components.ingest.sources`), then read in
parallel tasks (:mod:`components.ingest.readers`); bad files are skipped and counted by reason.
Each task writes its documents as sorted runs of at most ``data.shard_bytes`` in a scratch directory
(``executor.work_dir``); the stage merges the runs (:mod:`components.ingest.runs`, an external merge
sort) into (repo, path) order, so the output does not depend on directory order or on the number of
workers, caps it (``max_files``/``max_bytes``: the longest prefix that fits) and writes it with
:class:`~components.shards.ShardWriter`. Memory is bounded whatever the corpus size: a worker holds one
run, a merge one row group of each of at most 16 runs, and the writer one shard.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from components.corpus_stats import language_breakdown, stage_statistics
from components.errors import StageError
from components.ingest.readers import FileRules, read_task
from components.ingest.runs import MAX_FAN_IN, documents_of, merge_plan, merge_runs, merge_task
from components.ingest.sources import plan_source
from components.params import StageContext
from components.params.ingest import IngestConfig
from components.report import ShardResult, StageReport
from components.shards import BASE_SCHEMA, ShardWriter, shard_name
from components.stage_runner import Exclusions, Stage, StageIO, shard_outputs
from components.storage import work_directory

DUPLICATE_PATH = "duplicate_path"
CAP_MAX_FILES = "cap_max_files"
CAP_MAX_BYTES = "cap_max_bytes"
CAP_LANGUAGE_BYTES = "cap_language_bytes"


#: What ingest records of a document it leaves out (its content is still in the source).
EXCLUDED_FIELDS = ("id", "repo", "path", "lang", "size_bytes")


@dataclass
class SourceCounts:
    """Per-source numbers for the report's details, with the source's dropped files."""

    source: str
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    excluded: Exclusions = field(default_factory=Exclusions)

    def result(self) -> ShardResult:
        """The source's counts as a unit of the stage's totals."""
        return ShardResult(self.files_in, self.files_out, self.bytes_in, self.bytes_out, self.excluded.counts)

    def as_dict(self) -> dict[str, Any]:
        """JSON form: counts only, drops sorted by reason."""
        return {
            "source": self.source,
            **{name: getattr(self, name) for name in ("files_in", "files_out", "bytes_in", "bytes_out")},
            "drops": dict(sorted(self.excluded.counts.items())),
        }


def select_documents(
    documents: Iterable[tuple[int, dict[str, Any]]], config: IngestConfig
) -> Iterator[tuple[int, str | None, dict[str, Any]]]:
    """Apply the caps to ``(source_index, document)`` pairs in (repo, path, source) order.

    A (repo, path) seen twice keeps its first source. Each language of ``max_bytes_per_language`` keeps
    the longest prefix of its documents within its cap; then ``max_files`` and ``max_bytes`` keep the
    longest prefix of what is left. Yields ``(source_index, reason, document)`` for every document,
    ``reason`` ``None`` for a kept one.
    """
    max_files, max_bytes = config.max_files, config.max_bytes
    kept = 0
    total_bytes = 0
    cap_reason: str | None = None
    language_bytes: Counter[str] = Counter()
    capped_languages: set[str] = set()
    previous_key: tuple[str, str] | None = None
    for source_index, document in documents:
        key = (document["repo"], document["path"])
        if key == previous_key:
            yield source_index, DUPLICATE_PATH, document
            continue
        previous_key = key
        lang, size = document["lang"], document["size_bytes"]
        language_cap = config.max_bytes_per_language.get(lang)
        if language_cap is not None and (
            lang in capped_languages or language_bytes[lang] + size > language_cap
        ):
            capped_languages.add(lang)
            yield source_index, CAP_LANGUAGE_BYTES, document
            continue
        if cap_reason is None:
            if max_files is not None and kept >= max_files:
                cap_reason = CAP_MAX_FILES
            elif max_bytes is not None and total_bytes + document["size_bytes"] > max_bytes:
                cap_reason = CAP_MAX_BYTES
        if cap_reason is not None:
            yield source_index, cap_reason, document
            continue
        kept += 1
        total_bytes += size
        language_bytes[lang] += size
        yield source_index, None, document


@dataclass
class Written:
    """What :func:`write_documents` wrote: files, shards and the repos."""

    files: int = 0
    shards: int = 0
    repos: set[str] = field(default_factory=set)


def write_documents(
    documents: Iterable[tuple[int, dict[str, Any]]],
    config: IngestConfig,
    counts: list[SourceCounts],
    directory: str,
    shard_bytes: int,
) -> Written:
    """Write the documents the caps keep as shards of ``directory``; count the others as left out."""
    written = Written()
    writer = ShardWriter(directory, BASE_SCHEMA, shard_bytes)
    for source_index, reason, document in select_documents(documents, config):
        source_counts = counts[source_index]
        if reason is not None:
            source_counts.excluded.drop(reason, {name: document[name] for name in EXCLUDED_FIELDS})
            continue
        writer.add(document)
        source_counts.files_out += 1
        source_counts.bytes_out += document["size_bytes"]
        written.files += 1
        written.repos.add(document["repo"])
    written.shards = len(writer.close())
    return written


def run(config: IngestConfig, context: StageContext, io: StageIO) -> StageReport:
    """Read the configured sources into Parquet shards of documents (BASE_SCHEMA)."""
    from components.executor import map_shards

    output = io.require_output("ingest")
    rules = FileRules.of(config)
    counts = [SourceCounts(source=source.describe()) for source in config.sources]
    tasks = []
    for index, source in enumerate(config.sources):
        plan = plan_source(index, source, rules)
        tasks.extend(plan.tasks)
        counts[index].files_in += plan.excluded.counts.total()
        counts[index].excluded.merge(plan.excluded)

    with work_directory(context.executor.work_dir, prefix="codemill-ingest-") as runs_dir:
        read = functools.partial(read_task, runs_dir=runs_dir, run_bytes=context.data.shard_bytes)
        results = map_shards(read, tasks, context.executor)
        for result in results:
            source_counts = counts[result.source_index]
            source_counts.files_in += result.files_seen
            source_counts.bytes_in += result.bytes_read
            source_counts.excluded.merge(result.excluded)
        for source, source_counts in zip(config.sources, counts, strict=True):
            if source_counts.files_in == 0:
                found = "rows" if source.kind == "files" else "files"
                raise StageError(f"ingest: {source.describe()}: no {found} found")
        runs = [path for result in results for path in result.runs]
        level = 0
        while len(runs) > MAX_FAN_IN:  # merge MAX_FAN_IN at a time until one merge is left
            runs = map_shards(merge_task, merge_plan(runs, runs_dir, level), context.executor)
            level += 1
        with shard_outputs(output) as out:
            documents = documents_of(merge_runs(runs))
            written = write_documents(documents, config, counts, out.output, context.data.shard_bytes)
            if not written.files:
                seen = sum(c.files_in for c in counts)
                drops = sum((c.excluded.counts for c in counts), Counter())
                raise StageError(
                    f"ingest: no document kept out of {seen} files seen (skipped: "
                    f"{dict(sorted(drops.items()))}); check ingest.languages={config.languages} and the caps"
                )
            for index, source_counts in enumerate(counts):
                source_counts.excluded.write(out.exclusions(shard_name(index)))
            languages = language_breakdown(out.output, out.excluded)

    report = StageReport("ingest")
    for source_counts in counts:
        report.add(source_counts.result())
    report.metrics = {"repos": len(written.repos), "shards": written.shards}
    report.details = {
        "sources": [source_counts.as_dict() for source_counts in counts],
        "languages": languages,
    }
    return report


STAGE = Stage("ingest", run, statistics=stage_statistics)

__all__ = ["STAGE", "run"]
