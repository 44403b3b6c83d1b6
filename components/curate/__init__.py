"""The curate stage: heuristic filters of design.md §3, with quality signals kept as columns.

Each input shard maps to one output shard of the same name holding the surviving documents: every input
column, then these signal columns (stable names; later stages select on them, e.g. annealing's
high-quality subset). Fractions are over all characters of the content, whitespace included.

| column | type | meaning |
| --- | --- | --- |
| ``num_chars`` | int | characters of content |
| ``num_lines`` | int | lines (``str.splitlines``) |
| ``max_line_length`` / ``mean_line_length`` | int / float | characters per line |
| ``alnum_fraction`` | float | letters and digits |
| ``alpha_fraction`` | float | letters |
| ``digit_fraction`` | float | digits |
| ``whitespace_fraction`` | float | whitespace |
| ``hex_word_fraction`` | float | characters in ``0x…`` hex literals |
| ``ast_parses`` | bool | Python: ``ast.parse`` succeeds (null for other languages, as below) |
| ``pass_line_fraction`` | float | Python: non-blank lines that are a bare ``pass`` |
| ``import_line_fraction`` | float | Python: non-blank lines that start ``import`` / ``from … import`` |
| ``has_docstring`` | bool | Python: the module or a function/class has a docstring |
| ``has_tests`` | bool | Python: defines ``test_*``/``Test*``, or imports unittest/pytest |
| ``quality_score`` | float | in [0, 1]: half text quality, a quarter each docstrings and tests (see below) |

``quality_score`` is defined in ``signals.quality_score``; rules, thresholds and the per-language table
are in ``rules.py`` and ``config.py``. The report counts drops per rule name (zeros included) and, in
``details.languages``, kept/dropped documents per language.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from components.curate.config import CurateConfig
from components.curate.rules import DROP_REASONS, Curator
from components.curate.signals import SIGNAL_SCHEMA, Signals
from components.errors import StageError
from components.executor import map_shards
from components.report import ShardCounts, StageReport
from components.shards import atomic_output_dir, list_shards, read_shard, table_bytes, write_shard

if TYPE_CHECKING:  # components.config imports components.curate.config: no runtime import back
    from components.config import Params
    from components.stage import StageIO

REQUIRED_COLUMNS = ("lang", "content", "size_bytes")


@dataclass(frozen=True)
class ShardTask:
    """One shard to curate: where to read, where to write, and the rules."""

    input_path: str
    output_path: str
    config: CurateConfig


@dataclass
class ShardResult(ShardCounts):
    """Counts of one curated shard."""

    quality_sum: float = 0.0
    #: language -> {"kept": n, "dropped": n}
    languages: dict[str, Counter[str]] = field(default_factory=dict)


def decoded_contents(table: pa.Table) -> list[str]:
    """The content column as text. Parquet readers do not check UTF-8, so the bytes are decoded here, invalid
    sequences becoming lone surrogates (which the ``invalid_text`` check drops) instead of crashing."""
    raw = table["content"].cast(pa.binary()).to_pylist()
    return [value.decode("utf-8", "surrogateescape") for value in raw]


def with_signal_columns(table: pa.Table, signals: list[Signals]) -> pa.Table:
    """``table`` with the signal columns (replacing any of the same name) appended in SIGNAL_SCHEMA order."""
    table = table.drop_columns([name for name in SIGNAL_SCHEMA.names if name in table.column_names])
    for signal in SIGNAL_SCHEMA:
        table = table.append_column(signal, pa.array([row[signal.name] for row in signals], signal.type))
    return table


def curate_shard(task: ShardTask) -> ShardResult:
    """Filter one shard and write the survivors, with their signal columns, to ``task.output_path``."""
    table = read_shard(task.input_path)
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise StageError(f"{task.input_path}: missing column(s) {', '.join(missing)}")
    curator = Curator(task.config)
    result = ShardResult(files_in=table.num_rows, bytes_in=table_bytes(table))
    kept_rows: list[int] = []
    kept_signals: list[Signals] = []
    rows = zip(
        decoded_contents(table), table["lang"].to_pylist(), table["size_bytes"].to_pylist(), strict=True
    )
    for index, (content, lang, size_bytes) in enumerate(rows):
        reason, signals = curator.judge(content, lang, size_bytes)
        counts = result.languages.setdefault(lang, Counter(kept=0, dropped=0))
        if reason is None:
            kept_rows.append(index)
            kept_signals.append(signals)
            counts["kept"] += 1
            result.quality_sum += signals["quality_score"]
        else:
            result.drops[reason] += 1
            counts["dropped"] += 1
    kept = with_signal_columns(table.take(pa.array(kept_rows, pa.int64())), kept_signals)
    write_shard(kept, task.output_path)
    result.files_out, result.bytes_out = kept.num_rows, table_bytes(kept)
    return result


def run(params: Params, io: StageIO) -> StageReport:
    """Drop documents that fail the heuristic filters of params.curate; keep quality signals as columns."""
    if len(io.inputs) != 1 or not io.output:
        raise StageError("curate needs exactly one --input directory and an --output directory")
    shards = list_shards(io.inputs[0])
    report = StageReport(stage="curate")
    report.merge_drops(dict.fromkeys(DROP_REASONS, 0))
    with atomic_output_dir(io.output) as tmp:
        tasks = [ShardTask(path, f"{tmp}/{path.rsplit('/', 1)[-1]}", params.curate) for path in shards]
        results = map_shards(curate_shard, tasks, params.executor)
    languages: dict[str, Counter[str]] = {}
    quality_sum = 0.0
    for result in results:
        report.add_counts(result)
        quality_sum += result.quality_sum
        for lang, counts in result.languages.items():
            languages.setdefault(lang, Counter(kept=0, dropped=0)).update(counts)
    report.details["languages"] = {lang: dict(counts) for lang, counts in sorted(languages.items())}
    report.metrics["kept_fraction"] = report.files_out / report.files_in if report.files_in else 0.0
    report.metrics["kept_bytes_fraction"] = report.bytes_out / report.bytes_in if report.bytes_in else 0.0
    report.metrics["mean_quality_score"] = quality_sum / report.files_out if report.files_out else 0.0
    return report
