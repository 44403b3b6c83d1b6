"""What the suite validates: one pandas frame per shard, with derived columns computed from the content.

Great Expectations checks columns, so the checks that need code (clean's PII rules with their
context checks, the decontamination matcher) become derived columns here, computed shard by shard in
worker processes:

| column | meaning | expected |
| --- | --- | --- |
| ``residual_pii`` | ``rule: match`` per PII span that the selected clean rules still find | ``""`` |
| ``benchmark_overlap`` | benchmark problems clean's decontamination finds in the document | ``0`` |

Frames are indexed by ``repo/path`` so failures name the documents. Only the base columns
(``components.shards.BASE_SCHEMA``) are read; stage columns (quality signals...) are not validated.
No Great Expectations here: ``sharded.py`` validates the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa

from components.clean.decontam import benchmark_index
from components.clean.pii import PII_RULES, PiiRule, find_pii
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec
from components.params.validate import ValidateJob
from components.shards import BASE_SCHEMA, read_shard

RESIDUAL_PII = "residual_pii"
BENCHMARK_OVERLAP = "benchmark_overlap"
#: Characters of a PII match shown in ``residual_pii`` (keeps messages and Data Docs short).
MAX_SHOWN_CHARS = 60


@dataclass(frozen=True)
class ShardTask:
    """One shard to load: its path, the PII rules to re-run and the benchmarks to look for (or none)."""

    path: str
    pii_rules: tuple[str, ...]
    decontam: DecontamConfig | None
    benchmarks: tuple[BenchmarkSpec, ...] = ()


def pii_rules(job: ValidateJob) -> tuple[str, ...]:
    """The ``validate.pii_rules`` whose kind clean redacts (none when clean's PII step is off)."""
    if not job.clean.pii.enabled:
        return ()
    kind_of = {rule.name: rule.kind for rule in PII_RULES}
    return tuple(name for name in job.validate_.pii_rules if kind_of[name] in job.clean.pii.kinds)


def checks_benchmarks(job: ValidateJob) -> bool:
    """Whether clean decontaminates against any benchmark (of ``evaluate.benchmarks``)."""
    return job.clean.decontam.enabled and bool(job.benchmarks)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def residual_pii(text: object, rules: Sequence[PiiRule]) -> str:
    """``rule: match`` for every PII span ``rules`` find in ``text`` (``""`` for none or a non-string)."""
    if not isinstance(text, str) or not rules:
        return ""
    return "; ".join(
        f"{span.rule.name}: {_shorten(text[span.start : span.end])}" for span in find_pii(text, rules)
    )


def benchmark_overlap(
    contents: Sequence[object], decontam: DecontamConfig, benchmarks: Sequence[BenchmarkSpec]
) -> list[int]:
    """Per document, the number of benchmark problems clean's decontamination finds in it."""
    index = benchmark_index(decontam, benchmarks)
    return [len(index.contaminations(text)) if isinstance(text, str) else 0 for text in contents]


def _pandas_type(data_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Integers stay integers when they hold nulls (``Int64``, not ``float64``)."""
    return pd.Int64Dtype() if pa.types.is_integer(data_type) else None


def document_labels(frame: pd.DataFrame, shard: str) -> pd.Index:
    """``repo/path`` per row, or ``<shard>:<row>`` when those columns are missing."""
    if {"repo", "path"} <= set(frame.columns):
        return pd.Index(frame["repo"].astype(str) + "/" + frame["path"].astype(str))
    name = PurePosixPath(shard).name
    return pd.Index([f"{name}:{row}" for row in range(len(frame))])


def load_shard(task: ShardTask) -> pd.DataFrame:
    """The shard's base columns (those present) plus the derived columns, indexed by document."""
    table = read_shard(task.path)
    table = table.select([name for name in BASE_SCHEMA.names if name in table.column_names])
    frame = table.to_pandas(types_mapper=_pandas_type)
    frame.index = document_labels(frame, task.path)
    if "content" in frame.columns:
        if task.pii_rules:
            rules = [rule for rule in PII_RULES if rule.name in task.pii_rules]
            frame[RESIDUAL_PII] = [residual_pii(text, rules) for text in frame["content"]]
        if task.decontam is not None:
            overlap = benchmark_overlap(frame["content"], task.decontam, task.benchmarks)
            frame[BENCHMARK_OVERLAP] = pd.array(overlap, "Int64")
    return frame


def content_bytes(frame: pd.DataFrame) -> int:
    """Sum of ``size_bytes`` (0 when the column is missing or not numeric)."""
    if "size_bytes" not in frame.columns or not pd.api.types.is_numeric_dtype(frame["size_bytes"]):
        return 0
    return int(frame["size_bytes"].sum())
