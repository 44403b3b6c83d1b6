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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.errors import StageError
from components.ingest.languages import language_table
from components.ingest.readers import FileRules, read_task
from components.ingest.sources import plan_source
from components.report import ShardCounts, StageReport
from components.shards import BASE_SCHEMA, ShardWriter, atomic_output_dir

if TYPE_CHECKING:  # components.config imports components.ingest.config: no runtime import back
    from components.config import Params
    from components.stage import StageIO

DUPLICATE_PATH = "duplicate_path"
CAP_MAX_FILES = "cap_max_files"
CAP_MAX_BYTES = "cap_max_bytes"


@dataclass
class SourceCounts(ShardCounts):
    """Per-source numbers for the report's details."""

    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form, drops sorted by reason."""
        return {**self.__dict__, "drops": dict(sorted(self.drops.items()))}


def select_documents(
    documents: list[tuple[int, dict[str, Any]]], max_files: int | None, max_bytes: int | None
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """Sort ``(source_index, document)`` pairs by (repo, path, source) and apply the caps.

    A (repo, path) seen twice keeps its first source. The caps keep the longest prefix with at most
    ``max_files`` documents and ``max_bytes`` content bytes. Returns the kept pairs and
    ``(source_index, reason)`` for every document left out.
    """
    documents = sorted(documents, key=lambda pair: (pair[1]["repo"], pair[1]["path"], pair[0]))
    kept: list[tuple[int, dict[str, Any]]] = []
    left_out: list[tuple[int, str]] = []
    total_bytes = 0
    cap_reason: str | None = None
    previous_key: tuple[str, str] | None = None
    for source_index, document in documents:
        key = (document["repo"], document["path"])
        if key == previous_key:
            left_out.append((source_index, DUPLICATE_PATH))
            continue
        previous_key = key
        if cap_reason is None:
            if max_files is not None and len(kept) >= max_files:
                cap_reason = CAP_MAX_FILES
            elif max_bytes is not None and total_bytes + document["size_bytes"] > max_bytes:
                cap_reason = CAP_MAX_BYTES
        if cap_reason is not None:
            left_out.append((source_index, cap_reason))
            continue
        kept.append((source_index, document))
        total_bytes += document["size_bytes"]
    return kept, left_out


def run(params: Params, io: StageIO) -> StageReport:
    """Read the configured sources into Parquet shards of documents (BASE_SCHEMA)."""
    from components.executor import map_shards  # imports components.config, which imports this package

    if not io.output:
        raise StageError("ingest: --output (the shard directory to write) is required")
    config = params.ingest
    rules = FileRules(
        max_file_bytes=config.max_file_bytes,
        language_table=language_table(config.extensions),
        languages=frozenset(config.languages) if config.languages is not None else None,
    )
    counts = [SourceCounts(source=source.describe()) for source in config.sources]
    tasks = []
    for index, source in enumerate(config.sources):
        plan = plan_source(index, source, rules)
        tasks.extend(plan.tasks)
        counts[index].files_in += sum(plan.drops.values())
        counts[index].drops.update(plan.drops)

    documents: list[tuple[int, dict[str, Any]]] = []
    for result in map_shards(read_task, tasks, params.executor):
        source_counts = counts[result.source_index]
        source_counts.files_in += result.files_seen
        source_counts.bytes_in += result.bytes_read
        source_counts.drops.update(result.drops)
        documents.extend((result.source_index, document) for document in result.documents)
    for source, source_counts in zip(config.sources, counts, strict=True):
        if source_counts.files_in == 0:
            found = "rows" if source.kind == "files" else "files"
            raise StageError(f"ingest: {source.describe()}: no {found} found")

    kept, left_out = select_documents(documents, config.max_files, config.max_bytes)
    for source_index, reason in left_out:
        counts[source_index].drops[reason] += 1
    if not kept:
        seen = sum(c.files_in for c in counts)
        drops = sum((c.drops for c in counts), Counter())
        raise StageError(
            f"ingest: no document kept out of {seen} files seen (skipped: {dict(sorted(drops.items()))}); "
            f"check ingest.languages={config.languages} and the caps"
        )

    languages: Counter[str] = Counter()
    with atomic_output_dir(io.output) as tmp_dir:
        writer = ShardWriter(tmp_dir, BASE_SCHEMA, params.data.shard_bytes)
        for source_index, document in kept:
            writer.add(document)
            counts[source_index].files_out += 1
            counts[source_index].bytes_out += document["size_bytes"]
            languages[document["lang"]] += 1
        shard_count = len(writer.close())

    report = StageReport("ingest")
    for source_counts in counts:
        report.add_counts(source_counts)
    repos = len({document["repo"] for _, document in kept})
    report.metrics = {"repos": repos, "shards": shard_count}
    report.details = {
        "sources": [source_counts.as_dict() for source_counts in counts],
        "languages": dict(sorted(languages.items())),
    }
    return report


__all__ = ["run"]
