"""The ``git`` source: local repositories' history as StarCoder's commit documents.

Every non-merge commit reachable from ``HEAD`` gives one document per changed file::

    <commit_before>OLD CONTENT<commit_msg>MESSAGE<commit_after>NEW CONTENT

(``OLD CONTENT`` is empty for an added file). Its ``repo`` is the repository's name, its ``path``
``<commit sha>/<file path>`` and its ``lang`` ``git-commits``. Skipped and counted, by reason: deleted
files (``deleted_file``), files of no known language, binary or non-UTF-8 sides, and changes whose two sides
together exceed ``ingest.max_file_bytes`` (``too_large``, decided from ``git cat-file`` sizes before any
content is read). The author's and committer's e-mail addresses are replaced by ``<EMAIL>`` wherever
they appear in the document; the clean stage's PII pass handles any other.

git itself reads the repositories (``git log``, ``git diff-tree``, ``git cat-file --batch``): a
``paths`` entry is a repository (a work tree or a bare one) or a folder whose subdirectories are.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from components.clean.pii import PLACEHOLDERS
from components.errors import StageError
from components.formats import COMMIT_AFTER, COMMIT_BEFORE, COMMIT_MSG, GIT_COMMITS
from components.ingest.readers import TOO_LARGE, UNKNOWN_LANGUAGE, FileRules, TaskResult, decode_content
from components.ingest.runs import SortedRuns
from components.languages import language_of
from components.shards import make_document

DELETED_FILE = "deleted_file"
#: git's id of "no object" (the old side of an added file).
NULL_SHA = "0" * 40
_FIELD, _RECORD = "\x00", "\x1e"


@dataclass(frozen=True)
class Change:
    """One file a commit changed: its path and the blob ids of its two sides."""

    path: str
    old_blob: str
    new_blob: str
    status: str


@dataclass(frozen=True)
class Commit:
    """A commit's id, message, the addresses to redact, and its changed files."""

    sha: str
    message: str
    emails: tuple[str, ...]
    changes: tuple[Change, ...]


def is_repository(path: str) -> bool:
    """Whether ``path`` is a git work tree or a bare repository."""
    return os.path.exists(os.path.join(path, ".git")) or os.path.isfile(os.path.join(path, "HEAD"))


def repositories(directory: str) -> list[str]:
    """``directory`` itself when it is a repository, else its subdirectories that are, sorted."""
    if not os.path.isdir(directory):
        raise StageError(f"ingest: git source: {directory} is not a directory")
    if is_repository(directory):
        return [directory]
    found = [entry.path for entry in sorted(os.scandir(directory), key=lambda e: e.name) if entry.is_dir()]
    return [path for path in found if is_repository(path)]


def _git(location: str, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", location, *args], capture_output=True, check=False, env={**os.environ, "LC_ALL": "C"}
    )
    if completed.returncode != 0:
        raise StageError(
            f"ingest: git source: {location}: git {args[0]} failed: {completed.stderr.decode()[:500]}"
        )
    return completed.stdout.decode("utf-8", "replace")


def commits(location: str) -> Iterator[Commit]:
    """The non-merge commits reachable from HEAD, oldest first, with their changed files."""
    log = _git(location, "log", "--no-merges", "--reverse", "--format=%H%x00%ae%x00%ce%x00%B%x1e")
    for record in log.split(_RECORD):
        record = record.lstrip("\n")
        if not record:
            continue
        sha, author, committer, message = record.split(_FIELD, 3)
        tree = _git(location, "diff-tree", "-r", "-z", "--root", "--no-commit-id", "--no-renames", sha)
        fields = tree.split("\x00")
        changes = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            if not meta.startswith(":"):
                continue
            _, _, old_blob, new_blob, status = meta[1:].split(" ")
            changes.append(Change(path, old_blob, new_blob, status[0]))
        emails = tuple(sorted({address for address in (author, committer) if "@" in address}))
        yield Commit(sha, message.strip("\n"), emails, tuple(changes))


class BlobReader:
    """Blob sizes and contents of one repository through ``git cat-file --batch(-check)``."""

    def __init__(self, location: str):
        command = ["git", "-C", location, "cat-file"]
        self._check = subprocess.Popen(
            [*command, "--batch-check"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._batch = subprocess.Popen([*command, "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def size(self, blob: str) -> int:
        """Bytes of ``blob`` (0 for the null id)."""
        if blob == NULL_SHA:
            return 0
        assert self._check.stdin and self._check.stdout
        self._check.stdin.write(f"{blob}\n".encode())
        self._check.stdin.flush()
        return int(self._check.stdout.readline().split()[2])

    def read(self, blob: str) -> bytes:
        """The content of ``blob`` (empty for the null id)."""
        if blob == NULL_SHA:
            return b""
        assert self._batch.stdin and self._batch.stdout
        self._batch.stdin.write(f"{blob}\n".encode())
        self._batch.stdin.flush()
        size = int(self._batch.stdout.readline().split()[2])
        data = self._batch.stdout.read(size)
        self._batch.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        """End both git processes."""
        for process in (self._check, self._batch):
            if process.stdin:
                process.stdin.close()
            process.wait()


def redact(text: str, emails: tuple[str, ...]) -> str:
    """``text`` with each of ``emails`` replaced by the e-mail placeholder."""
    for email in emails:
        text = text.replace(email, PLACEHOLDERS["email"])
    return text


@dataclass(frozen=True)
class GitRepoTask:
    """One repository's history to read into commit documents."""

    source_index: int
    repo: str
    location: str
    rules: FileRules

    def read(self, out: SortedRuns) -> TaskResult:
        """Write a document per changed file of every commit; skipped changes counted by reason."""
        result = TaskResult(self.source_index)
        blobs = BlobReader(self.location)
        try:
            for commit in commits(self.location):
                for change in commit.changes:
                    result.files_seen += 1
                    text, reason = self._document(commit, change, blobs, result)
                    where = {"repo": self.repo, "path": f"{commit.sha}/{change.path}", "lang": GIT_COMMITS}
                    if text is None:
                        result.excluded.drop(reason or DELETED_FILE, where)
                        continue
                    out.add(make_document(self.repo, where["path"], GIT_COMMITS, text))
        finally:
            blobs.close()
        return result

    def _document(
        self, commit: Commit, change: Change, blobs: BlobReader, result: TaskResult
    ) -> tuple[str | None, str | None]:
        if change.status == "D":
            return None, DELETED_FILE
        if language_of(change.path, self.rules.language_table) is None:
            return None, UNKNOWN_LANGUAGE
        if blobs.size(change.old_blob) + blobs.size(change.new_blob) > self.rules.max_file_bytes:
            return None, TOO_LARGE
        sides = []
        for blob in (change.old_blob, change.new_blob):
            data = blobs.read(blob)
            result.bytes_read += len(data)
            text, reason = decode_content(data, self.rules.max_file_bytes) if data else ("", None)
            if text is None:
                return None, reason
            sides.append(text)
        old, new = sides
        document = f"{COMMIT_BEFORE}{old}{COMMIT_MSG}{commit.message}{COMMIT_AFTER}{new}"
        return redact(document, commit.emails), None
