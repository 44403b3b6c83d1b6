"""What a data stage's output holds, per language: the numbers the people curating look at.

Read from the shards themselves (only the ``lang`` and ``size_bytes`` columns), so every data stage reports
the same way whatever its own logic: ``{lang: {"files": kept, "bytes": kept content bytes, "dropped": n}}``,
the dropped count from the stage's exclusion dataset (its ``lang`` column).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.compute as pc

from components.shards import list_shards, read_shard


def _counts(directory: str, columns: list[str]) -> tuple[Counter[str], Counter[str]]:
    """Rows and summed ``size_bytes`` per ``lang`` over the shards of ``directory`` (none: empty)."""
    files: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for path in list_shards(directory):
        table = read_shard(path, columns=columns)
        table = table.filter(pc.is_valid(table["lang"]))  # files of no known language have none
        if not table.num_rows:
            continue
        grouped = table.group_by("lang")
        aggregates = [("lang", "count")] + ([("size_bytes", "sum")] if "size_bytes" in columns else [])
        for row in grouped.aggregate(aggregates).to_pylist():
            files[row["lang"]] += row["lang_count"]
            sizes[row["lang"]] += row.get("size_bytes_sum") or 0
    return files, sizes


def language_breakdown(output: str, excluded: str | None = None) -> dict[str, dict[str, Any]]:
    """Kept files and bytes, and dropped files, per language of a stage's output (and exclusions)."""
    files, sizes = _counts(output, ["lang", "size_bytes"])
    dropped = _counts(excluded, ["lang"])[0] if excluded else Counter()
    return {
        lang: {"files": files[lang], "bytes": sizes[lang], "dropped": dropped[lang]}
        for lang in sorted(set(files) | set(dropped))
    }
