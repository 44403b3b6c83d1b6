"""The curate stage: heuristic filters (docs/data-recipe.md), with quality signals kept as columns.

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
are in ``rules.py`` and ``components/params/curate.py``. The report counts drops per rule name (zeros
included) and, in ``details.languages``, kept/dropped documents per language; the dropped documents,
with their rule and its threshold, go to ``data/curate.excluded``.

Held out: documents of the repositories whose name hashes below ``curate.holdout_fraction`` that pass
the filters go (and then, for a language with no held-out document, its kept documents in its smallest
repository are moved there),
with their signal columns, to ``data/curate.holdout`` instead (not counted as kept or dropped; metric
``held_out``): the evaluation's fixed held-out set, taken before dedup, so that every arm of a dedup
ablation is measured on the same text, and every language gets a held-out bits per byte.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from components.corpus_stats import language_breakdown, stage_statistics
from components.curate.rules import DROP_REASONS, INVALID_TEXT, Curator
from components.curate.signals import SIGNAL_SCHEMA, Signals
from components.errors import StageError
from components.params import StageContext
from components.params.curate import CurateConfig
from components.report import ShardResult, StageReport
from components.shards import list_shards, read_shard, table_bytes, write_shard
from components.stage_runner import (
    Exclusions,
    Input,
    Stage,
    StageIO,
    run_shards,
    shard_outputs,
    summed_counters,
)
from components.tokens.packing import unit_hash

#: Columns of a dropped document kept in the exclusion dataset (besides its content).
EXCLUDED_COLUMNS = ["id", "repo", "path", "lang", "size_bytes"]
REQUIRED_COLUMNS = (*EXCLUDED_COLUMNS, "content")


@dataclass(frozen=True)
class ShardTask:
    """One shard to curate: where to read, where to write the survivors and the dropped, the rules."""

    input_path: str
    output_path: str
    excluded_path: str
    holdout_path: str
    config: CurateConfig
    #: Repositories whose documents go to the held-out set (:func:`held_out_repositories`).
    held_out: frozenset[str] = frozenset()


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
    """Filter one shard and write the survivors, with their signal columns, to ``task.output_path``.

    Counters: ``quality_sum`` (of kept documents) and ``lang.<lang>.kept`` / ``lang.<lang>.dropped``.
    """
    table = read_shard(task.input_path)
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise StageError(f"{task.input_path}: missing column(s) {', '.join(missing)}")
    curator = Curator(task.config)
    result = ShardResult(files_in=table.num_rows, bytes_in=table_bytes(table))
    excluded = Exclusions()
    kept_rows: list[int] = []
    kept_signals: list[Signals] = []
    held_rows: list[int] = []
    held_signals: list[Signals] = []
    repos = table["repo"].to_pylist()
    dropped: list[tuple[int, str, str]] = []
    contents = decoded_contents(table)
    for index, (content, lang, size_bytes) in enumerate(
        zip(contents, table["lang"].to_pylist(), table["size_bytes"].to_pylist(), strict=True)
    ):
        reason, signals = curator.judge(content, lang, size_bytes)
        if reason is None and signals is not None and repos[index] in task.held_out:
            held_rows.append(index)
            held_signals.append(signals)
            result.counters["held_out"] += 1
        elif reason is None and signals is not None:
            kept_rows.append(index)
            kept_signals.append(signals)
            result.counters["quality_sum"] += signals["quality_score"]
        else:
            reason = reason or INVALID_TEXT
            dropped.append((index, reason, curator.explain(reason, signals, lang)))
    rows = table.take(pa.array([index for index, _, _ in dropped], pa.int64()))
    for (index, reason, detail), row in zip(dropped, rows.select(EXCLUDED_COLUMNS).to_pylist(), strict=True):
        text = contents[index].encode("utf-8", "replace").decode("utf-8")  # no lone surrogates in Parquet
        excluded.drop(reason, {**row, "content": text}, detail)
    kept = with_signal_columns(table.take(pa.array(kept_rows, pa.int64())), kept_signals)
    write_shard(kept, task.output_path)
    write_shard(
        with_signal_columns(table.take(pa.array(held_rows, pa.int64())), held_signals), task.holdout_path
    )
    excluded.write(task.excluded_path)
    result.drops = excluded.counts
    result.files_out, result.bytes_out = kept.num_rows, table_bytes(kept)
    return result


def is_held_out(repo: str, fraction: float) -> bool:
    """Whether repository ``repo`` belongs to the held-out set (the same on every run and machine)."""
    return unit_hash("holdout", repo) < fraction


def held_out_repositories(shards: list[str], fraction: float) -> frozenset[str]:
    """The input's repositories whose name hashes below ``fraction`` (reads only the ``repo`` column)."""
    if fraction <= 0:
        return frozenset()
    repos = {repo for shard in shards for repo in read_shard(shard, columns=["repo"])["repo"].to_pylist()}
    return frozenset(repo for repo in repos if is_held_out(repo, fraction))


def languages_to_hold_out(kept: list[str], holdout: list[str]) -> frozenset[tuple[str, str]]:
    """``(repo, lang)`` for each language with no held-out document and kept documents in at least two
    repositories: its repository with the fewest kept documents of it (then the lowest hash). Counted
    after the filters, so the chosen documents are ones that pass them."""
    held_languages = {
        lang or "" for shard in holdout for lang in read_shard(shard, columns=["lang"])["lang"].to_pylist()
    }
    documents: dict[str, Counter[str]] = {}  # lang -> kept documents per repository
    for shard in kept:
        table = read_shard(shard, columns=["repo", "lang"])
        for repo, lang in zip(table["repo"].to_pylist(), table["lang"].to_pylist(), strict=True):
            documents.setdefault(lang or "", Counter())[repo] += 1
    return frozenset(
        (min(counts, key=lambda repo: (counts[repo], unit_hash("holdout", repo), repo)), lang)
        for lang, counts in documents.items()
        if len(counts) >= 2 and lang not in held_languages
    )


def move_to_holdout(tasks: list[ShardTask], chosen: frozenset[tuple[str, str]]) -> Counter[str]:
    """Move the kept documents of the ``(repo, lang)`` pairs in ``chosen`` to their shards' held-out
    files; counters ``documents``, ``bytes`` and ``quality_sum`` of what moved."""
    moved: Counter[str] = Counter()
    if not chosen:
        return moved
    for task in tasks:
        kept = read_shard(task.output_path)
        pairs = zip(kept["repo"].to_pylist(), kept["lang"].to_pylist(), strict=True)
        mask = pa.array([(repo, lang or "") in chosen for repo, lang in pairs], pa.bool_())
        rows = kept.filter(mask)
        if not rows.num_rows:
            continue
        write_shard(kept.filter(pa.compute.invert(mask)), task.output_path)
        write_shard(pa.concat_tables([read_shard(task.holdout_path), rows]), task.holdout_path)
        moved["documents"] += rows.num_rows
        moved["bytes"] += table_bytes(rows)
        moved["quality_sum"] += pa.compute.sum(rows["quality_score"]).as_py()
    return moved


def run(config: CurateConfig, context: StageContext, io: StageIO) -> StageReport:
    """Drop documents that fail the heuristic filters of params.curate; keep quality signals as columns."""
    report = StageReport(stage="curate")
    report.merge_drops(dict.fromkeys(DROP_REASONS, 0))
    shards = list_shards(io.input("documents"))
    held_out = held_out_repositories(shards, config.holdout_fraction)
    with shard_outputs(io.require_output("curate"), holdout=True) as out:
        tasks = [
            ShardTask(path, out.shard(path), out.exclusions(path), out.held_out(path), config, held_out)
            for path in shards
        ]
        results = run_shards(curate_shard, tasks, context, report)
        moved: Counter[str] = Counter()
        if config.holdout_fraction > 0:
            chosen = languages_to_hold_out([t.output_path for t in tasks], [t.holdout_path for t in tasks])
            moved = move_to_holdout(tasks, chosen)
        report.files_out -= moved["documents"]
        report.bytes_out -= moved["bytes"]
        report.details["languages"] = language_breakdown(out.output, out.excluded)
    counters = summed_counters(results)
    counters["held_out"] += moved["documents"]
    counters["quality_sum"] -= moved["quality_sum"]
    report.metrics["held_out"] = float(counters["held_out"])
    report.metrics["kept_fraction"] = report.files_out / report.files_in if report.files_in else 0.0
    report.metrics["kept_bytes_fraction"] = report.bytes_out / report.bytes_in if report.bytes_in else 0.0
    quality_sum = counters["quality_sum"]
    report.metrics["mean_quality_score"] = quality_sum / report.files_out if report.files_out else 0.0
    return report


STAGE = Stage("curate", run, inputs=(Input("documents"),), statistics=stage_statistics)

__all__ = ["STAGE", "run"]
