"""Sorted runs: how ingest orders a corpus larger than memory by (repo, path, source), an external merge sort.

Each read task writes its documents as runs (:class:`SortedRuns`): Parquet files of at most
``run_bytes`` of content, sorted by (repo, path), in row groups of at most :data:`RUN_GROUP_BYTES`, with
the source's index as an extra column. The stage then merges the runs :data:`MAX_FAN_IN` at a time
(:func:`merge_task`, on the executor) until at most that many are left, and streams the last merge
(:func:`merge_runs`). A merge holds one row group per input run, so memory is bounded by
``MAX_FAN_IN x RUN_GROUP_BYTES`` whatever the corpus size. Ties keep run order, and runs are listed in
task order, then reading order: the order a stable sort of all documents would give.
"""

from __future__ import annotations

import contextlib
import heapq
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.shards import BASE_SCHEMA, filesystem

#: The column of a run that holds the document's source index (``ingest.sources``).
SOURCE_COLUMN = "_source_index"
RUN_SCHEMA = pa.schema([*BASE_SCHEMA, pa.field(SOURCE_COLUMN, pa.int32(), nullable=False)])
#: Content bytes per row group of a run (at least one row): what a merge holds of each input run.
RUN_GROUP_BYTES = 1_000_000
#: Runs merged at once.
MAX_FAN_IN = 16


def merge_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """The order of the output: (repo, path), then the source's index."""
    return row["repo"], row["path"], row[SOURCE_COLUMN]


class RunWriter:
    """Rows, already in order, written to one run in row groups of at most :data:`RUN_GROUP_BYTES`."""

    def __init__(self, path: str):
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        """Append one row (a BASE_SCHEMA document with its source index)."""
        self._rows.append(row)
        self._bytes += row["size_bytes"]
        if self._bytes >= RUN_GROUP_BYTES:
            self._write_group()

    def _write_group(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            fs, fs_path = filesystem(self.path)
            self._writer = pq.ParquetWriter(fs_path, RUN_SCHEMA, filesystem=fs, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=RUN_SCHEMA))
        self._rows, self._bytes = [], 0

    def close(self) -> str:
        """Write the last row group (an empty run has none) and return the run's path."""
        self._write_group()
        if self._writer is None:
            fs, fs_path = filesystem(self.path)
            pq.write_table(RUN_SCHEMA.empty_table(), fs_path, filesystem=fs)
        else:
            self._writer.close()
        return self.path


class SortedRuns:
    """One task's documents as runs of at most ``run_bytes`` of content each, sorted by (repo, path)."""

    def __init__(self, directory: str, source_index: int, run_bytes: int):
        self.directory = directory.rstrip("/")
        self.source_index = source_index
        self.run_bytes = run_bytes
        self.paths: list[str] = []
        self._pending: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, document: dict[str, Any]) -> None:
        """Add one document (a BASE_SCHEMA row); writes a run when ``run_bytes`` is reached."""
        self._pending.append({**document, SOURCE_COLUMN: self.source_index})
        self._bytes += document["size_bytes"]
        if self._bytes >= self.run_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the pending documents as one sorted run (no-op when none)."""
        if not self._pending:
            return
        self._pending.sort(key=merge_key)  # stable: a path read twice keeps its reading order
        writer = RunWriter(f"{self.directory}/run-{uuid.uuid4().hex}.parquet")
        for row in self._pending:
            writer.add(row)
        self.paths.append(writer.close())
        self._pending, self._bytes = [], 0


def run_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one run, a row group at a time."""
    fs, fs_path = filesystem(path)
    run = pq.ParquetFile(fs_path, filesystem=fs)
    for group in range(run.num_row_groups):
        yield from run.read_row_group(group).to_pylist()


def merge_runs(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The rows of ``paths`` merged in :func:`merge_key` order (ties: earlier runs first)."""
    return heapq.merge(*(run_rows(path) for path in paths), key=merge_key)


@dataclass(frozen=True)
class MergeTask:
    """Runs to merge into one, in order."""

    runs: tuple[str, ...]
    output: str


def merge_task(task: MergeTask) -> str:
    """Merge ``task.runs`` into ``task.output`` and delete them; module-level for ``map_shards``."""
    writer = RunWriter(task.output)
    for row in merge_runs(task.runs):
        writer.add(row)
    writer.close()
    for path in task.runs:
        fs, fs_path = filesystem(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fs_path)
    return task.output


def merge_plan(runs: Sequence[str], directory: str, level: int) -> list[MergeTask]:
    """One level of merges: consecutive groups of :data:`MAX_FAN_IN` runs, each into one new run."""
    groups = [tuple(runs[start : start + MAX_FAN_IN]) for start in range(0, len(runs), MAX_FAN_IN)]
    return [
        MergeTask(group, f"{directory.rstrip('/')}/merge-{level}-{index:05d}.parquet")
        for index, group in enumerate(groups)
    ]


def documents_of(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(source_index, document)`` of merged rows."""
    for row in rows:
        source_index = row.pop(SOURCE_COLUMN)
        yield source_index, row
