"""Shard I/O: deterministic Parquet, atomic output directories, clear errors for missing input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from components.shards import (
    BASE_SCHEMA,
    ShardWriter,
    atomic_output_dir,
    document_id,
    list_shards,
    read_shard,
    write_shard,
)


def _row(i: int) -> dict:
    content = f"print({i})\n" * (i + 1)
    return {
        "id": document_id("repo", f"f{i}.py"),
        "repo": "repo",
        "path": f"f{i}.py",
        "lang": "python",
        "content": content,
        "size_bytes": len(content),
        "sha256": "0" * 64,
        "license": None,
        "stars": None,
    }


def test_same_table_gives_same_bytes(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([_row(i) for i in range(20)], schema=BASE_SCHEMA)
    write_shard(table, str(tmp_path / "a.parquet"))
    write_shard(table, str(tmp_path / "b.parquet"))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_shard(str(tmp_path / "a.parquet")).equals(table)


def test_writer_splits_by_bytes_and_keeps_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardWriter(str(out), BASE_SCHEMA, shard_bytes=100)
    for i in range(10):
        writer.add(_row(i))
    paths = writer.close()
    assert len(paths) > 1
    assert paths == list_shards(str(out))
    ids = [i for p in paths for i in read_shard(p)["id"].to_pylist()]
    assert ids == [_row(i)["id"] for i in range(10)]


def test_empty_writer_leaves_one_empty_shard_with_schema(tmp_path: Path) -> None:
    (paths,) = [ShardWriter(str(tmp_path), BASE_SCHEMA, 10).close()]
    table = read_shard(paths[0])
    assert table.num_rows == 0 and table.schema.equals(BASE_SCHEMA)


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    with atomic_output_dir(str(final)) as tmp:
        (Path(tmp) / "part-00000.parquet").write_text("first")
    assert (final / "part-00000.parquet").read_text() == "first"

    with pytest.raises(RuntimeError), atomic_output_dir(str(final)) as tmp:
        (Path(tmp) / "part-00000.parquet").write_text("half-written")
        raise RuntimeError("killed mid-stage")
    assert (final / "part-00000.parquet").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no part-"):
        list_shards(str(tmp_path / "empty"))


def test_document_id_is_stable() -> None:
    assert document_id("r", "a.py") == document_id("r", "a.py") != document_id("r", "b.py")
    assert len(document_id("r", "a.py")) == 24
