"""Corpora the benches build from code already on the machine."""

from __future__ import annotations

import itertools
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.languages import language_of, language_table
from components.shards import BASE_SCHEMA, make_document, write_shard

#: What data/clean carries beyond the base columns (curate's quality signals, which anneal reads).
SIGNAL_FIELDS = [
    pa.field("has_docstring", pa.bool_()),
    pa.field("has_tests", pa.bool_()),
    pa.field("quality_score", pa.float64()),
]


def stdlib_clean_shard(folder: Path, files: int) -> Path:
    """A data/clean-like shard of the first ``files`` standard-library modules, one repo each."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for path in sorted(stdlib.glob("*.py"))[:files]:
        text = path.read_text(encoding="utf-8", errors="replace")
        row = make_document(f"stdlib/{path.stem}", path.name, "python", text, license="psf-2.0")
        rows.append({**row, "has_docstring": '"""' in text, "has_tests": False, "quality_score": 0.5})
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([*BASE_SCHEMA, *SIGNAL_FIELDS]))
    write_shard(table, str(folder / "part-00000.parquet"))
    return folder


@dataclass
class CodeCorpus:
    """A Stack-style ``files`` source built by :func:`code_corpus`: its table files and what they hold."""

    paths: list[Path]
    files: int
    bytes: int
    near_copies: int
    exact_copies: int


def machine_code_files(max_file_bytes: int = 1_000_000) -> list[tuple[str, str, str]]:
    """``(repo, path, text)`` of every source file of a known language in the standard library and
    site-packages (one repo per top-level directory), sorted; files over ``max_file_bytes`` or not UTF-8
    are left out. Python, C, C++, JavaScript, shell, ... whatever is installed."""
    table = language_table()
    roots = {"stdlib": sysconfig.get_paths()["stdlib"], "site": sysconfig.get_paths()["purelib"]}
    found = []
    for prefix, root in roots.items():
        base = Path(root)
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(base)
            if prefix == "stdlib" and relative.parts[0] == "site-packages":
                continue  # the interpreter's own site-packages: "site" reads the venv's
            if "__pycache__" in relative.parts or language_of(path.name, table) is None:
                continue
            try:
                if not path.is_file() or path.stat().st_size > max_file_bytes:
                    continue
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                repo = f"{prefix}/{relative.parts[0] if len(relative.parts) > 1 else relative.stem}"
                found.append((repo, relative.as_posix(), text))
    return found


def code_corpus(folder: Path, target_bytes: int, file_bytes: int = 8_000_000) -> CodeCorpus:
    """A corpus of about ``target_bytes`` from the machine's code, as Stack-style Parquet files
    (``max_stars_repo_name``, ``max_stars_repo_path``, ``content`` ...) of about ``file_bytes`` each.

    Every 10th file also gets a near copy in a fork (a comment line added) and every 20th an exact copy
    in a mirror, so dedup has work. When the machine's code runs out before the target, it is read again
    as near copies (``copyN/`` repos), one comment line different per pass.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = machine_code_files()
    writer = _TableFiles(folder, file_bytes)
    corpus = CodeCorpus(paths=[], files=0, bytes=0, near_copies=0, exact_copies=0)
    for round_index in itertools.count():
        for index, (repo, path, text) in enumerate(sources):
            if corpus.bytes >= target_bytes:
                corpus.paths = writer.close()
                return corpus
            if round_index:
                writer.add(f"copy{round_index}/{repo}", path, f"{text}\n# copy {round_index}\n")
                corpus.near_copies += 1
            else:
                writer.add(repo, path, text)
                if index % 10 == 3:
                    writer.add(f"forks/{repo}", path, f"{text}\n# forked\n")
                    corpus.near_copies += 1
                if index % 20 == 7:
                    writer.add(f"mirrors/{repo}", path, text)
                    corpus.exact_copies += 1
            corpus.files, corpus.bytes = writer.rows, writer.bytes
    raise AssertionError("unreachable")


class _TableFiles:
    """Rows written as Parquet files of about ``file_bytes`` of content each."""

    def __init__(self, folder: Path, file_bytes: int):
        self.folder, self.file_bytes = folder, file_bytes
        self.paths: list[Path] = []
        self.rows = self.bytes = 0
        self._pending: list[dict[str, object]] = []
        self._pending_bytes = 0

    def add(self, repo: str, path: str, text: str) -> None:
        size = len(text.encode("utf-8"))
        self._pending.append(
            {
                "max_stars_repo_name": repo,
                "max_stars_repo_path": path,
                "max_stars_repo_licenses": ["psf-2.0"] if repo.startswith("stdlib") else [],
                "max_stars_count": len(repo) % 7,
                "content": text,
            }
        )
        self.rows += 1
        self.bytes += size
        self._pending_bytes += size
        if self._pending_bytes >= self.file_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            path = self.folder / f"train-{len(self.paths):05d}.parquet"
            pq.write_table(pa.Table.from_pylist(self._pending), path, compression="zstd")
            self.paths.append(path)
            self._pending, self._pending_bytes = [], 0

    def close(self) -> list[Path]:
        self._flush()
        return self.paths
