"""The ``sources`` stage: a fingerprint of what ingest would read, so ``dvc repro`` sees the corpus change.

DVC cannot track a corpus that lives outside the project (the standard library, site-packages, a
directory of repositories, a bucket). This stage runs every time (``always_changed`` in ``dvc.yaml``),
lists every source exactly as ingest does (:func:`~components.ingest.sources.plan_source`) and writes
``data/sources.json``: per source, its files' count, bytes and one digest over their paths and contents
(local files, xxh3), their size and modification stamp (``files`` and ``issues`` sources: tables of any
size on any store, where reading them all again each run would cost as much as ingest), or each
repository's ``HEAD`` commit (``git`` sources). Ingest depends on that
file: when nothing changed the fingerprint's bytes are the same, DVC leaves ingest and everything after
it cached; an edited, added or removed file changes it, and ingest reruns.
"""

from __future__ import annotations

import subprocess
from typing import Any

import xxhash

from components.ingest.git_commits import GitRepoTask
from components.ingest.issues import IssuesFileTask
from components.ingest.readers import FileRules, LocalFilesTask, TableTask
from components.ingest.sources import plan_source
from components.params import StageContext
from components.params.ingest import IngestConfig, SourceConfig
from components.report import StageReport, write_json
from components.shards import filesystem
from components.stage_runner import Stage, StageIO, stage_main

CHUNK = 1 << 20


def _hash_file(digest: Any, location: str) -> int:
    """Feed a local file's bytes to ``digest``; returns its size (an unreadable file counts as empty:
    ingest skips it too)."""
    size = 0
    try:
        with open(location, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        digest.update(b"\0unreadable")
    return size


def source_fingerprint(index: int, source: SourceConfig, rules: FileRules) -> dict[str, Any]:
    """Files, bytes and digest of what ingest reads from ``source`` (see the module docstring)."""
    plan = plan_source(index, source, rules)
    digest, files, size = xxhash.xxh3_128(), 0, 0
    for reason, count in sorted(plan.excluded.counts.items()):  # skipped entries count as content too
        digest.update(f"{reason}={count}\n".encode())
    for task in plan.tasks:
        if isinstance(task, LocalFilesTask):
            for file in task.files:
                digest.update(f"\n{file.repo}\0{file.path}\0".encode("utf-8", "surrogateescape"))
                size += _hash_file(digest, file.location)
                files += 1
        elif isinstance(task, GitRepoTask):
            heads = subprocess.run(
                ["git", "-C", task.location, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
            digest.update(f"\n{task.repo}\0{heads}".encode())
            files += 1
        elif isinstance(task, TableTask | IssuesFileTask):
            fs, path = filesystem(task.url, dict(getattr(task, "storage_options", {})))
            info = fs.info(path)
            stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
            digest.update(f"\n{task.url}\0{info.get('size')}\0{stamp}".encode())
            size += int(info.get("size") or 0)
            files += 1
    return {"source": source.describe(), "files": files, "bytes": size, "digest": digest.hexdigest()}


def run(config: IngestConfig, context: StageContext, io: StageIO) -> StageReport:
    """Write the fingerprint of every source ingest reads (``data/sources.json``)."""
    output = io.require_output("sources")
    rules = FileRules.of(config)
    sources = [source_fingerprint(index, source, rules) for index, source in enumerate(config.sources)]
    write_json(output, {"sources": sources})
    report = StageReport(
        "sources", files_in=sum(s["files"] for s in sources), bytes_in=sum(s["bytes"] for s in sources)
    )
    report.files_out = 1
    report.details = {"sources": sources}
    return report


STAGE = Stage("sources", run)

__all__ = ["STAGE", "run", "source_fingerprint"]

if __name__ == "__main__":
    raise SystemExit(stage_main(STAGE))
