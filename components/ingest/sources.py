"""Find what each source holds and turn it into read tasks (no file content is read here).

Local trees are walked in sorted order without following directory symlinks (like git: a linked
directory is not content, and following it could leave the corpus or loop). ``.git``, ``.hg``,
``.svn`` and ``__pycache__`` directories are not walked.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import PurePosixPath
from typing import Any

import fsspec

from components.errors import StageError
from components.ingest.git_commits import GitRepoTask, repositories
from components.ingest.issues import IssuesFileTask
from components.ingest.readers import (
    BAD_NAME,
    SYMLINK_DIR,
    SYMLINK_LOOP,
    SYMLINK_OUTSIDE,
    UNREADABLE,
    FileRules,
    LocalFile,
    LocalFilesTask,
    TableTask,
    Task,
)
from components.params.ingest import SourceConfig
from components.shards import filesystem
from components.stage_runner import Exclusions

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})
#: Third-party code inside the stdlib directory is not part of the standard library.
STDLIB_SKIPPED_DIRS = SKIPPED_DIRS | {"site-packages", "dist-packages"}
STDLIB_LICENSE = "PSF-2.0"
#: A directory written by ``save_to_disk`` holds one of these.
DATASET_MARKERS = ("state.json", "dataset_dict.json")
TABLE_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
#: Where the ``system`` source looks for code in languages other than Python (globs; missing ones are
#: skipped): C/C++ headers, npm's JavaScript, Perl's library, Go's and Rust's standard library sources.
SYSTEM_CODE_ROOTS = (
    "/usr/include",
    "/usr/local/include",
    "/usr/lib/node_modules",
    "/usr/local/lib/node_modules",
    "/usr/share/nodejs",
    "/usr/share/javascript",
    "/usr/share/perl",
    "/usr/share/perl5",
    "/usr/lib/*/perl",
    "/usr/lib/*/perl5",
    "/usr/lib/go/src",
    "/usr/local/go/src",
    "~/.rustup/toolchains/*/lib/rustlib/src/rust/library",
)
#: Files per read task. Large, because starting worker processes costs ~1 s: the stdlib (2,450 files,
#: 31 MB) reads in 0.5 s as one task but 1.4 s split over 2 workers; big corpora still spread out.
LOCAL_FILES_PER_TASK = 1024


@dataclass
class SourcePlan:
    """The read tasks of one source, plus entries skipped while listing it (counted as seen)."""

    tasks: list[Task] = field(default_factory=list)
    excluded: Exclusions = field(default_factory=Exclusions)


@dataclass
class WalkResult:
    """Files found under a directory (posix paths relative to it) and entries skipped on the way."""

    files: list[str] = field(default_factory=list)
    excluded: Exclusions = field(default_factory=Exclusions)


def walk_files(root: str, repo: str, skipped_dirs: frozenset[str] = SKIPPED_DIRS) -> WalkResult:
    """Every non-directory entry under ``root``, sorted. Skipped and recorded (with ``repo`` and their
    path): directory symlinks (not followed), symlinks that resolve outside ``root`` (a link to
    /etc/shadow is not source code of this tree), and names that are not valid UTF-8."""
    result = WalkResult()
    real_root = os.path.realpath(root)
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            result.excluded.drop(UNREADABLE, {"repo": repo, "path": prefix or "."})
            continue
        for entry in entries:
            relative = prefix + entry.name
            if not _is_utf8(entry.name):
                shown = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                result.excluded.drop(BAD_NAME, {"repo": repo, "path": shown})
            elif entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root):
                result.excluded.drop(SYMLINK_OUTSIDE, {"repo": repo, "path": relative})
            elif entry.is_dir(follow_symlinks=False):
                if entry.name not in skipped_dirs:
                    pending.append((entry.path, relative + "/"))
            elif entry.is_symlink() and _points_to_directory(entry.path):
                reason = SYMLINK_LOOP if _links_to_ancestor(entry.path) else SYMLINK_DIR
                result.excluded.drop(reason, {"repo": repo, "path": relative})
            else:
                # Files, file symlinks, broken or looping symlinks and special files: the reader decides.
                result.files.append(relative)
    result.files.sort()
    return result


def _is_utf8(name: str) -> bool:
    """Whether a file name (decoded by the OS layer with surrogateescape) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` lies within the resolved ``root``."""
    return os.path.commonpath([path, root]) == root


def _points_to_directory(link: str) -> bool:
    """Whether the symlink ``link`` resolves to a directory (broken and looping links do not)."""
    try:
        return stat.S_ISDIR(os.stat(link).st_mode)
    except OSError:
        return False


def _links_to_ancestor(link: str) -> bool:
    """Whether the directory symlink ``link`` points at a directory containing it (a cycle)."""
    target = os.path.realpath(link)
    parent = os.path.realpath(os.path.dirname(link))
    return os.path.commonpath([target, parent]) == target


def _chunked(files: list[LocalFile], source_index: int, rules: FileRules) -> list[Task]:
    """Local files in read tasks of LOCAL_FILES_PER_TASK files (the files are already sorted)."""
    return [
        LocalFilesTask(source_index, tuple(files[start : start + LOCAL_FILES_PER_TASK]), rules)
        for start in range(0, len(files), LOCAL_FILES_PER_TASK)
    ]


def _prefixed(prefix: str, repo: str) -> str:
    return f"{prefix}/{repo}" if prefix else repo


def stdlib_files(source: SourceConfig) -> tuple[list[LocalFile], Exclusions]:
    """The running interpreter's standard library: one repo per top-level module or package."""
    root = sysconfig.get_paths()["stdlib"]
    walked = walk_files(root, source.repo_prefix, STDLIB_SKIPPED_DIRS)
    files = []
    for relative in walked.files:
        top = relative.split("/", 1)[0]
        module = top if "/" in relative else PurePosixPath(top).stem
        repo = _prefixed(source.repo_prefix, module)
        files.append(LocalFile(repo, relative, os.path.join(root, relative), STDLIB_LICENSE))
    return files, walked.excluded


def _distribution_name(dist: metadata.Distribution) -> str:
    """The normalised (PEP 503) project name of an installed distribution."""
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "unknown").lower()


def _distribution_license(dist: metadata.Distribution) -> str | None:
    """The distribution's SPDX ``License-Expression``, or a short one-line ``License`` field."""
    fields: Any = dist.metadata  # an email.message.Message (typed as the PackageMetadata protocol)
    expression = fields.get("License-Expression")
    if expression:
        return str(expression)
    license = str(fields.get("License") or "").strip()
    return license if license and "\n" not in license and len(license) <= 64 else None


def site_packages_files(source: SourceConfig) -> list[LocalFile]:
    """Files of the installed distributions (their RECORD), one repo per distribution.

    Paths are as RECORD lists them, relative to site-packages; files outside it (``../../bin/...``)
    and ``__pycache__`` are left out. A name installed twice counts once (the first on ``sys.path``).
    """
    by_name: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        by_name.setdefault(_distribution_name(dist), dist)
    files = []
    for name in sorted(by_name):
        dist = by_name[name]
        license = _distribution_license(dist)
        repo = _prefixed(source.repo_prefix, name)
        for record in sorted({entry.as_posix() for entry in dist.files or []}):
            parts = record.split("/")
            if parts[0] == ".." or "__pycache__" in parts:
                continue
            files.append(LocalFile(repo, record, str(dist.locate_file(record)), license))
    return files


def system_code_roots() -> list[str]:
    """The :data:`SYSTEM_CODE_ROOTS` present on this machine, resolved and without repeats, sorted."""
    found = {
        os.path.realpath(match)
        for pattern in SYSTEM_CODE_ROOTS
        for match in glob.glob(os.path.expanduser(pattern))
        if os.path.isdir(match)
    }
    return sorted(found)


def vendored_package(repo: str, path: str) -> tuple[str, str]:
    """A file of a package bundled under ``node_modules/`` (npm ships its dependencies so) belongs to
    that package's own repo, ``<repo>/node_modules/<package>`` (``@scope/package`` for scoped ones),
    not to the project that bundled it: each is its own upstream project, and a repo-level split
    (dedup, the held-out set) must not treat them as one."""
    parts = path.split("/")
    marker = max((i for i, part in enumerate(parts[:-1]) if part == "node_modules"), default=-1)
    if marker < 0:
        return repo, path
    width = 2 if parts[marker + 1].startswith("@") else 1
    if marker + 1 + width >= len(parts):  # a file directly under node_modules/ or node_modules/@scope/
        return repo, path
    package = "/".join(parts[: marker + 1 + width])
    return f"{repo}/{package}", "/".join(parts[marker + 1 + width :])


def system_files(source: SourceConfig) -> tuple[list[LocalFile], Exclusions]:
    """Code of other languages this machine has (:func:`system_code_roots`): one repo per top-level
    directory of each root, named ``<prefix>/<root as usr-include>/<directory>``, and one per package
    bundled in it (:func:`vendored_package`)."""
    files: list[LocalFile] = []
    excluded = Exclusions()
    for root in system_code_roots():
        label = _prefixed(source.repo_prefix, root.strip("/").replace("/", "-"))
        walked = walk_files(root, label)
        excluded.merge(walked.excluded)
        for relative in walked.files:
            top, _, rest = relative.partition("/")
            repo, path = vendored_package(f"{label}/{top}", rest) if rest else (label, relative)
            files.append(LocalFile(repo, path, os.path.join(root, relative)))
    return files, excluded


def local_files(source: SourceConfig) -> tuple[list[LocalFile], Exclusions]:
    """Files under each directory of a ``local`` source.

    A directory that is a git work tree is one repo named after it; otherwise each subdirectory is a
    repo, and files directly in the directory form a repo named after the directory.
    """
    files: list[LocalFile] = []
    excluded = Exclusions()
    for directory in source.paths:
        if not os.path.isdir(directory):
            problem = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise StageError(f"ingest: {source.describe()}: {directory} {problem}")
        root = os.path.abspath(directory)
        own_name = os.path.basename(root)
        is_work_tree = os.path.exists(os.path.join(root, ".git"))
        walked = walk_files(root, _prefixed(source.repo_prefix, own_name))
        excluded.merge(walked.excluded)
        for relative in walked.files:
            top, _, rest = relative.partition("/")
            if is_work_tree or not rest:
                repo, path = own_name, relative
            else:
                repo, path = top, rest
            files.append(LocalFile(_prefixed(source.repo_prefix, repo), path, os.path.join(root, relative)))
    return files, excluded


def _table_format(path: str, requested: str) -> str | None:
    """The format to read ``path`` as: the source's ``format`` unless ``auto``, else by extension."""
    if requested != "auto":
        return requested
    name = path.lower().removesuffix(".gz").removesuffix(".zst").removesuffix(".bz2")
    return TABLE_SUFFIXES.get(PurePosixPath(name).suffix)


def _is_saved_dataset(fs: fsspec.AbstractFileSystem, directory: str) -> bool:
    """Whether ``directory`` was written by ``save_to_disk``."""
    return any(fs.exists(f"{directory.rstrip('/')}/{marker}") for marker in DATASET_MARKERS)


def table_locations(source: SourceConfig) -> list[tuple[str, str]]:
    """``(url, format)`` of every table file or saved dataset a ``files`` source names, sorted per path."""
    found: list[tuple[str, str]] = []
    for url in source.paths:
        fs, path = filesystem(url, dict(source.storage_options))
        scheme = url.split("://", 1)[0] + "://" if "://" in url else ""
        if any(char in path for char in "*?["):
            matches = sorted(fs.glob(path))
        elif fs.isdir(path):
            matches = [path] if _is_saved_dataset(fs, path) else sorted(fs.find(path))
        else:
            matches = [path] if fs.exists(path) else []
        for match in matches:
            if fs.isdir(match):
                if _is_saved_dataset(fs, match):
                    found.append((scheme + match, "dataset"))
            elif fmt := _table_format(match, source.format):
                found.append((scheme + match, fmt))
    return found


def plan_source(source_index: int, source: SourceConfig, rules: FileRules) -> SourcePlan:
    """The read tasks of one source; a StageError naming the source when it holds no file at all."""
    plan = SourcePlan()
    if source.kind == "git":
        for location in (repo for path in source.paths for repo in repositories(path)):
            name = _prefixed(source.repo_prefix, os.path.basename(os.path.abspath(location)))
            plan.tasks.append(GitRepoTask(source_index, name, location, rules))
        if not plan.tasks:
            raise StageError(f"ingest: {source.describe()}: no git repository found")
        return plan
    if source.kind == "issues":
        plan.tasks = [
            IssuesFileTask(source_index, url, source.repo_prefix, rules)
            for url, fmt in table_locations(source)
            if fmt == "jsonl"
        ]
        if not plan.tasks:
            raise StageError(f"ingest: {source.describe()}: no JSONL file of issues found")
        return plan
    if source.kind == "files":
        for url, fmt in table_locations(source):
            plan.tasks.append(
                TableTask(
                    source_index,
                    url,
                    fmt,
                    dict(source.columns),
                    dict(source.storage_options),
                    source.repo_prefix,
                    rules,
                )
            )
        if not plan.tasks:
            raise StageError(f"ingest: {source.describe()}: no Parquet/JSONL files or saved datasets found")
        return plan
    if source.kind == "python-stdlib":
        files, plan.excluded = stdlib_files(source)
    elif source.kind == "site-packages":
        files = site_packages_files(source)
    elif source.kind == "system":
        files, plan.excluded = system_files(source)
    else:
        files, plan.excluded = local_files(source)
    if not files and not plan.excluded.counts:
        raise StageError(f"ingest: {source.describe()}: no files found")
    plan.tasks = _chunked(files, source_index, rules)
    return plan
