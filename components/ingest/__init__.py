"""The ingest stage: read the configured sources into Parquet shards of documents (BASE_SCHEMA).

Sources (``ingest.sources``) are listed first (:mod:`components.ingest.sources`), then read in
parallel tasks (:mod:`components.ingest.readers`); bad files are skipped and counted by reason.
All kept documents are then sorted by (repo, path), so the output does not depend on directory
order or on the number of workers, capped (``max_files``/``max_bytes``: the longest prefix that
fits) and written with :class:`~components.shards.ShardWriter`. Documents are held in memory
between reading and writing, which suits corpora of up to a few GB.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from components.errors import StageError
from components.ingest.readers import FileRules, read_task
from components.ingest.sources import plan_source
from components.params import StageContext
from components.params.ingest import IngestConfig
from components.report import ShardResult, StageReport
from components.shards import BASE_SCHEMA, ShardWriter, shard_name
from components.stage_runner import Exclusions, Stage, StageIO, shard_outputs

DUPLICATE_PATH = "duplicate_path"
CAP_MAX_FILES = "cap_max_files"
CAP_MAX_BYTES = "cap_max_bytes"


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
    documents: list[tuple[int, dict[str, Any]]], max_files: int | None, max_bytes: int | None
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str, dict[str, Any]]]]:
    """Sort ``(source_index, document)`` pairs by (repo, path, source) and apply the caps.

    A (repo, path) seen twice keeps its first source. The caps keep the longest prefix with at most
    ``max_files`` documents and ``max_bytes`` content bytes. Returns the kept pairs and
    ``(source_index, reason, document)`` for every document left out.
    """
    documents = sorted(documents, key=lambda pair: (pair[1]["repo"], pair[1]["path"], pair[0]))
    kept: list[tuple[int, dict[str, Any]]] = []
    left_out: list[tuple[int, str, dict[str, Any]]] = []
    total_bytes = 0
    cap_reason: str | None = None
    previous_key: tuple[str, str] | None = None
    for source_index, document in documents:
        key = (document["repo"], document["path"])
        if key == previous_key:
            left_out.append((source_index, DUPLICATE_PATH, document))
            continue
        previous_key = key
        if cap_reason is None:
            if max_files is not None and len(kept) >= max_files:
                cap_reason = CAP_MAX_FILES
            elif max_bytes is not None and total_bytes + document["size_bytes"] > max_bytes:
                cap_reason = CAP_MAX_BYTES
        if cap_reason is not None:
            left_out.append((source_index, cap_reason, document))
            continue
        kept.append((source_index, document))
        total_bytes += document["size_bytes"]
    return kept, left_out


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

    documents: list[tuple[int, dict[str, Any]]] = []
    for result in map_shards(read_task, tasks, context.executor):
        source_counts = counts[result.source_index]
        source_counts.files_in += result.files_seen
        source_counts.bytes_in += result.bytes_read
        source_counts.excluded.merge(result.excluded)
        documents.extend((result.source_index, document) for document in result.documents)
    for source, source_counts in zip(config.sources, counts, strict=True):
        if source_counts.files_in == 0:
            found = "rows" if source.kind == "files" else "files"
            raise StageError(f"ingest: {source.describe()}: no {found} found")

    kept, left_out = select_documents(documents, config.max_files, config.max_bytes)
    for source_index, reason, document in left_out:
        counts[source_index].excluded.drop(reason, {name: document[name] for name in EXCLUDED_FIELDS})
    if not kept:
        seen = sum(c.files_in for c in counts)
        drops = sum((c.excluded.counts for c in counts), Counter())
        raise StageError(
            f"ingest: no document kept out of {seen} files seen (skipped: {dict(sorted(drops.items()))}); "
            f"check ingest.languages={config.languages} and the caps"
        )

    languages: Counter[str] = Counter()
    with shard_outputs(output) as out:
        writer = ShardWriter(out.output, BASE_SCHEMA, context.data.shard_bytes)
        for source_index, document in kept:
            writer.add(document)
            counts[source_index].files_out += 1
            counts[source_index].bytes_out += document["size_bytes"]
            languages[document["lang"]] += 1
        shard_count = len(writer.close())
        for index, source_counts in enumerate(counts):
            source_counts.excluded.write(out.exclusions(shard_name(index)))

    report = StageReport("ingest")
    for source_counts in counts:
        report.add(source_counts.result())
    repos = len({document["repo"] for _, document in kept})
    report.metrics = {"repos": repos, "shards": shard_count}
    report.details = {
        "sources": [source_counts.as_dict() for source_counts in counts],
        "languages": dict(sorted(languages.items())),
    }
    return report


STAGE = Stage("ingest", run)

__all__ = ["STAGE", "run"]
