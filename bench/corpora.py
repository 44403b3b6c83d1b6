"""Corpora the benches build from code already on the machine."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pyarrow as pa

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
