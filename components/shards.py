"""Parquet shards passed between stages: one schema, atomic writes, local or ``s3://`` via fsspec.

A stage reads ``<input>/part-*.parquet`` and writes ``<output>/part-00000.parquet`` … .
Outputs are written into a temporary sibling directory that is renamed into place only
when the stage succeeds, so a killed run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import fsspec.implementations.local
import pyarrow as pa
import pyarrow.parquet as pq

from components.errors import StageError

#: Columns every stage's documents carry (docs/architecture.md); stages add their own after these.
BASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("repo", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),
        pa.field("content", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("license", pa.string()),
        pa.field("stars", pa.int64()),
    ]
)

SHARD_GLOB = "part-*.parquet"


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


def document_id(repo: str, path: str) -> str:
    """Stable id of a document: a hash of its repo and path (same across runs and machines)."""
    return hashlib.sha256(f"{repo}\0{path}".encode()).hexdigest()[:24]


def content_sha256(content: str) -> str:
    """sha256 hex digest of the UTF-8 content."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def make_document(
    repo: str, path: str, lang: str, content: str, license: str | None = None, stars: int | None = None
) -> dict[str, Any]:
    """One BASE_SCHEMA row; ``id`` depends only on (repo, path), so it is stable across runs."""
    return {
        "id": document_id(repo, path),
        "repo": repo,
        "path": path,
        "lang": lang,
        "content": content,
        "size_bytes": len(content.encode("utf-8")),
        "sha256": content_sha256(content),
        "license": license,
        "stars": stars,
    }


def filesystem(
    path: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` (local or ``s3://``) and the path within it."""
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs, fs_path


def _with_scheme(url: str, fs_path: str) -> str:
    """Put ``url``'s scheme (``s3://``) back in front of a path that fsspec returned without it."""
    return f"{url.split('://', 1)[0]}://{fs_path}" if "://" in url else fs_path


def list_shards(directory: str) -> list[str]:
    """Sorted shard paths under ``directory``; a clear error if there are none."""
    fs, root = filesystem(directory)
    if not fs.isdir(root):
        raise FileNotFoundError(f"{directory}: input directory does not exist (did the previous stage run?)")
    found = sorted(fs.glob(f"{root.rstrip('/')}/{SHARD_GLOB}"))
    if not found:
        raise FileNotFoundError(f"{directory}: no {SHARD_GLOB} shards found")
    return [_with_scheme(directory, path) for path in found]


def read_shard(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one shard (all columns unless ``columns`` is given)."""
    fs, fs_path = filesystem(path)
    # Passing the filesystem (not an open file object) avoids pyarrow's pre-buffer threads
    # aborting the interpreter at exit.
    return pq.read_table(fs_path, filesystem=fs, columns=columns)


def write_shard(table: pa.Table, path: str) -> None:
    """Write one shard deterministically (same table -> same bytes)."""
    fs, fs_path = filesystem(path)
    pq.write_table(
        table,
        fs_path,
        filesystem=fs,
        compression="zstd",
        write_statistics=False,
        store_schema=True,
    )


def table_bytes(table: pa.Table, column: str = "size_bytes") -> int:
    """Sum of ``size_bytes`` (content bytes) of a table's rows."""
    if table.num_rows == 0:
        return 0
    return int(pa.compute.sum(table[column]).as_py())


@contextlib.contextmanager
def atomic_output_dir(directory: str) -> Iterator[str]:
    """Yield a temporary directory next to ``directory``; on success it replaces ``directory``.

    On an exception the temporary directory is removed and ``directory`` is left as it was.
    """
    fs, final = filesystem(directory)
    final = final.rstrip("/")
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield _with_scheme(directory, tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(tmp, recursive=True)
        raise
    if fs.exists(final):
        fs.rm(final, recursive=True)
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        os.replace(tmp, final)
    else:  # object stores have no directory rename: move file by file
        for source in fs.find(tmp):
            fs.mv(source, final + source[len(tmp) :])
        with contextlib.suppress(FileNotFoundError):
            fs.rm(tmp, recursive=True)


def iter_tables(directory: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Iterate the shards of ``directory`` as tables, in shard order."""
    for path in list_shards(directory):
        yield read_shard(path, columns=columns)


class ShardWriter:
    """Accumulate rows and write a shard each time ``shard_bytes`` of content is reached."""

    def __init__(self, directory: str, schema: pa.Schema, shard_bytes: int):
        self.directory = directory.rstrip("/")
        self.schema = schema
        self.shard_bytes = shard_bytes
        self.paths: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        """Add one row; flushes a shard when it is full."""
        self._rows.append(row)
        self._bytes += int(row.get("size_bytes") or 0)
        if self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as the next shard (no-op when empty)."""
        if not self._rows:
            return
        path = f"{self.directory}/{shard_name(len(self.paths))}"
        write_shard(pa.Table.from_pylist(self._rows, schema=self.schema), path)
        self.paths.append(path)
        self._rows, self._bytes = [], 0

    def close(self) -> list[str]:
        """Flush the last shard; always leaves at least one (possibly empty) shard. Returns all paths."""
        self.flush()
        if not self.paths:
            path = f"{self.directory}/{shard_name(0)}"
            write_shard(self.schema.empty_table(), path)
            self.paths.append(path)
        return self.paths


def iter_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each non-blank line of a JSON-lines file (local or ``s3://``, ``.gz`` too).

    ``where`` is ``path:line``. A line that is not a JSON object, or an unreadable file, raises
    :class:`StageError` naming the file and line.
    """
    fs, fs_path = filesystem(path)
    try:
        with fs.open(fs_path, "rt", encoding="utf-8", compression="infer") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise StageError(f"{where}: invalid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise StageError(f"{where}: expected a JSON object, got {type(record).__name__}")
                yield where, record
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: cannot read ({exc})") from None
