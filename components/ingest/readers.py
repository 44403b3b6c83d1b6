"""Read candidate files and table rows into documents, skipping bad ones with a named reason.

Work comes as picklable tasks (a chunk of local files, or one table file / saved dataset) so that
:func:`read_task` can be mapped over them with ``components.executor.map_shards``. Every skip goes
through the same checks and is recorded in ``TaskResult.excluded`` under one of the reasons below.
Kept documents go to :class:`~components.ingest.runs.SortedRuns` (sorted runs in a scratch directory,
which the stage merges): a task holds one run, never its whole output.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.errors import StageError
from components.ingest.notebooks import FORM_LANGUAGES, NOTEBOOK, convert_notebook
from components.ingest.runs import SortedRuns
from components.languages import (
    KNOWN_LANGUAGES,
    emitted_languages,
    language_of,
    language_table,
    normalize_language,
)
from components.params.ingest import IngestConfig, NotebookConfig
from components.shards import filesystem, make_document
from components.stage_runner import Exclusions

# Skip reasons (report.drops keys).
BINARY = "binary"
NOT_UTF8 = "not_utf8"
UNREADABLE = "unreadable"
EMPTY = "empty"
TOO_LARGE = "too_large"
SYMLINK_LOOP = "symlink_loop"
BROKEN_SYMLINK = "broken_symlink"
SYMLINK_DIR = "symlink_dir"
UNKNOWN_LANGUAGE = "unknown_language"
#: Languages of notebooks, converted as ``ingest.notebooks`` says.
NOTEBOOK_LANGUAGES = frozenset(FORM_LANGUAGES.values())
LANGUAGE_NOT_SELECTED = "language_not_selected"
MISSING_METADATA = "missing_metadata"
BAD_RECORD = "bad_record"
SYMLINK_OUTSIDE = "symlink_outside"
BAD_NAME = "bad_name"

#: Our column -> the columns tried, in order, when a ``files`` source does not map it explicitly.
#: Covers The Stack (``max_stars_repo_name`` ...) and CodeParrot (``repo_name``, ``license``) layouts.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "content": ("content", "text", "code"),
    "repo": ("repo", "repo_name", "max_stars_repo_name"),
    "path": ("path", "max_stars_repo_path", "file_path"),
    "lang": ("lang", "language"),
    "stars": ("stars", "max_stars_count", "stars_count"),
    "license": ("license", "licenses", "max_stars_repo_licenses"),
}
REQUIRED_COLUMNS = ("content", "repo", "path")

ROWS_PER_BATCH = 1024


@dataclass(frozen=True)
class FileRules:
    """What a document must satisfy: a known, selected language and at most ``max_file_bytes``."""

    max_file_bytes: int
    language_table: Mapping[str, str]
    #: Languages kept (:func:`emitted_languages`).
    languages: frozenset[str]
    notebooks: NotebookConfig = field(default_factory=NotebookConfig)

    @classmethod
    def of(cls, config: IngestConfig) -> FileRules:
        """The rules of ``ingest:`` params."""
        return cls(
            max_file_bytes=config.max_file_bytes,
            language_table=language_table(config.extensions),
            languages=emitted_languages(config.languages, config.extensions),
            notebooks=config.notebooks,
        )

    def language(self, path: str, declared: str | None = None) -> tuple[str | None, str | None]:
        """``(language, None)`` for a kept file, else ``(None, skip reason)``.

        ``declared`` (a dataset's own ``lang`` value) wins over the extension table; a declared name
        that no table knows is an unknown language.
        """
        lang = normalize_language(declared) if declared else language_of(path, self.language_table)
        if lang == NOTEBOOK:
            lang = FORM_LANGUAGES[self.notebooks.form]
        if lang is None or (lang not in self.languages and lang not in KNOWN_LANGUAGES):
            return None, UNKNOWN_LANGUAGE
        if lang not in self.languages:
            return None, LANGUAGE_NOT_SELECTED
        return lang, None

    def text(self, lang: str, data: str | bytes) -> tuple[str | None, str | None]:
        """``(text, None)`` of a kept file's content (a notebook converted), else ``(None, skip reason)``."""
        text, reason = decode_content(data, self.max_file_bytes)
        if text is not None and lang in NOTEBOOK_LANGUAGES:
            return convert_notebook(text, self.notebooks.form, self.notebooks.max_output_chars)
        return text, reason


@dataclass
class TaskResult:
    """What one task read: its sorted runs of documents (BASE_SCHEMA rows), with its skip counts."""

    source_index: int
    runs: list[str] = field(default_factory=list)
    excluded: Exclusions = field(default_factory=Exclusions)
    files_seen: int = 0
    bytes_read: int = 0


def decode_content(data: bytes | str, max_file_bytes: int) -> tuple[str | None, str | None]:
    """``(text, None)`` for usable content, else ``(None, reason)``: too_large, binary, not_utf8, empty."""
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > max_file_bytes:
        return None, TOO_LARGE
    if isinstance(data, bytes):
        if b"\0" in data:
            return None, BINARY
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return None, NOT_UTF8
    elif "\0" in data:
        return None, BINARY
    if not data.strip():
        return None, EMPTY
    return data, None


def stat_error_reason(location: str, error: OSError) -> str:
    """Name why ``location`` could not be stat'ed or opened: a symlink problem or plain unreadable."""
    if error.errno == errno.ELOOP:
        return SYMLINK_LOOP
    if error.errno == errno.ENOENT and os.path.islink(location):
        return BROKEN_SYMLINK
    return UNREADABLE


def read_local_file(location: str, max_file_bytes: int) -> tuple[bytes | None, str | None]:
    """The bytes of a regular file, or ``(None, reason)``. Larger files are never read (stat first)."""
    try:
        info = os.stat(location)
    except OSError as error:
        return None, stat_error_reason(location, error)
    if not stat.S_ISREG(info.st_mode):  # FIFOs, sockets, devices: opening could block or fail
        return None, UNREADABLE
    if info.st_size > max_file_bytes:
        return None, TOO_LARGE
    try:
        with open(location, "rb") as handle:
            data = handle.read(max_file_bytes + 1)  # bounded even if the file grew since stat
    except OSError as error:
        return None, stat_error_reason(location, error)
    return data, None


@dataclass(frozen=True)
class LocalFile:
    """A file on local disk: which repo it belongs to, its path in the repo, and where to read it."""

    repo: str
    path: str
    location: str
    license: str | None = None


@dataclass(frozen=True)
class LocalFilesTask:
    """A chunk of local files to read."""

    source_index: int
    files: tuple[LocalFile, ...]
    rules: FileRules

    def read(self, out: SortedRuns) -> TaskResult:
        """Read every file of the chunk into ``out``; skipped files are counted by reason."""
        result = TaskResult(self.source_index, files_seen=len(self.files))
        for file in self.files:
            lang, reason = self.rules.language(file.path)
            text = None
            if lang is not None:
                data, reason = read_local_file(file.location, self.rules.max_file_bytes)
                if data is not None:
                    result.bytes_read += len(data)
                    text, reason = self.rules.text(lang, data)
            if lang is None or text is None:
                where = {"repo": file.repo, "path": file.path, "lang": lang}
                result.excluded.drop(reason or UNREADABLE, where)
                continue
            out.add(make_document(file.repo, file.path, lang, text, file.license))
        return result


def resolve_columns(available: list[str], explicit: Mapping[str, str], where: str) -> dict[str, str]:
    """Our column -> the source column to read: ``explicit`` entries, else the first default present."""
    mapping: dict[str, str] = {}
    for ours, candidates in DEFAULT_COLUMNS.items():
        if ours in explicit:
            if explicit[ours] not in available:
                raise StageError(
                    f"ingest: {where}: column {explicit[ours]!r} (columns.{ours}) not found; "
                    f"columns are {available}"
                )
            mapping[ours] = explicit[ours]
            continue
        found = next((name for name in candidates if name in available), None)
        if found is not None:
            mapping[ours] = found
        elif ours in REQUIRED_COLUMNS:
            raise StageError(
                f"ingest: {where}: no {ours!r} column (tried {list(candidates)}); columns are "
                f"{available}; map it with columns: {{{ours}: <column>}} in the source's params"
            )
    return mapping


def license_text(value: Any) -> str | None:
    """A licence value as one string: lists (The Stack's ``max_stars_repo_licenses``) joined by commas."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) or None
    return str(value) or None


def star_count(value: Any) -> int | None:
    """Stars as an int; missing, NaN or non-numeric values are ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else int(number)


@dataclass(frozen=True)
class TableTask:
    """One Parquet or JSONL file, or one saved ``datasets`` directory, of a ``files`` source."""

    source_index: int
    url: str
    format: str  # parquet | jsonl | dataset
    columns: Mapping[str, str]
    storage_options: Mapping[str, Any]
    repo_prefix: str
    rules: FileRules

    def read(self, out: SortedRuns) -> TaskResult:
        """Turn every row into a document in ``out`` or a counted skip."""
        result = TaskResult(self.source_index)
        mapping: dict[str, str] | None = None
        for rows in self._row_batches(result):
            for row in rows:
                if mapping is None:
                    mapping = resolve_columns(list(row), self.columns, self.url)
                self._add_row(row, mapping, result, out)
        return result

    def _add_row(
        self, row: dict[str, Any], mapping: dict[str, str], result: TaskResult, out: SortedRuns
    ) -> None:
        result.files_seen += 1
        repo, path = row.get(mapping["repo"]), row.get(mapping["path"])
        if not isinstance(repo, str) or not isinstance(path, str) or not repo or not path:
            shown = {"repo": str(repo) if repo else None, "path": str(path) if path else None}
            result.excluded.drop(MISSING_METADATA, shown, detail=self.url)
            return
        repo = f"{self.repo_prefix}/{repo}" if self.repo_prefix else repo
        declared = row.get(mapping["lang"]) if "lang" in mapping else None
        lang, reason = self.rules.language(path, declared if isinstance(declared, str) else None)
        content = row.get(mapping["content"])
        text = None
        if lang is not None:
            if isinstance(content, str | bytes):
                raw = content if isinstance(content, bytes) else content.encode("utf-8")
                result.bytes_read += len(raw)
                text, reason = self.rules.text(lang, content)
            else:
                reason = EMPTY
        if lang is None or text is None:
            result.excluded.drop(reason or EMPTY, {"repo": repo, "path": path, "lang": lang}, detail=self.url)
            return
        license = license_text(row.get(mapping["license"])) if "license" in mapping else None
        stars = star_count(row.get(mapping["stars"])) if "stars" in mapping else None
        out.add(make_document(repo, path, lang, text, license, stars))

    def _row_batches(self, result: TaskResult) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts, a batch at a time, whatever the format."""
        # A fresh copy each call: fsspec/datasets may add keys to the dict they are given.
        options = copy.deepcopy(dict(self.storage_options))
        if self.format == "dataset":
            yield from _dataset_batches(self.url, options)
            return
        fs, path = filesystem(self.url, options)
        if self.format == "parquet":
            import pyarrow.parquet as pq

            for record_batch in pq.ParquetFile(path, filesystem=fs).iter_batches(batch_size=ROWS_PER_BATCH):
                yield record_batch.to_pylist()
            return
        with fs.open(path, "rt", encoding="utf-8", compression="infer") as handle:
            batch: list[dict[str, Any]] = []
            for line in handle:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if not isinstance(row, dict):
                    result.files_seen += 1
                    result.excluded.drop(BAD_RECORD, {}, detail=f"{self.url}: {line[:200]}")
                    continue
                batch.append(row)
                if len(batch) == ROWS_PER_BATCH:
                    yield batch
                    batch = []
            yield batch


def _dataset_batches(url: str, storage_options: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """Rows of a directory written by ``Dataset.save_to_disk`` (every split of a DatasetDict, by name)."""
    import datasets

    loaded = datasets.load_from_disk(url, storage_options=storage_options or None)
    splits = (
        [loaded[name] for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    )
    for split in splits:
        for batch in split.iter(batch_size=ROWS_PER_BATCH):
            yield [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


class Task(Protocol):
    """A unit of reading: its source, and what it writes into sorted runs."""

    @property
    def source_index(self) -> int:
        """Which ``ingest.sources`` entry the task reads."""
        ...

    def read(self, out: SortedRuns) -> TaskResult:
        """Read into ``out``; returns the counts and skips."""
        ...


def read_task(task: Task, runs_dir: str, run_bytes: int) -> TaskResult:
    """Run one task, its documents written as sorted runs under ``runs_dir`` (module-level so
    ``map_shards`` can send it to a worker process)."""
    runs = SortedRuns(runs_dir, task.source_index, run_bytes)
    result = task.read(runs)
    runs.flush()
    result.runs = runs.paths
    return result
