"""What a data stage's output holds: the numbers and distributions the people curating look at.

- :func:`language_breakdown`: per language, ``{"files": kept, "bytes": kept content bytes, "dropped": n}``
  (only the ``lang`` and ``size_bytes`` columns are read; the dropped count from the exclusion dataset).
- :func:`stage_statistics` (datatrove's summary statistics): the distributions of document length, lines,
  mean line length, alphanumeric share and duplicate-cluster size before (the stage's input) and after
  (its output), as counts, means, quantiles and histograms; the tokenize stage adds tokens per document.
  :func:`plot_statistics` draws them; the stage runner writes both beside the report and logs them to
  the stage's MLflow run under ``corpus_stats/``.

Read from the shards themselves, a shard at a time, so every data stage reports the same way.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from components.report import Artifact, write_json
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


#: Distributions shown before and after each data stage (datatrove's summary statistics): name -> (title,
#: log-scale axis). ``tokens`` comes from the tokenize stage, ``dup_cluster_size`` from dedup onwards.
DISTRIBUTIONS: dict[str, tuple[str, bool]] = {
    "length_bytes": ("document length (bytes)", True),
    "lines": ("lines per document", True),
    "mean_line_length": ("mean line length (characters)", True),
    "alnum_fraction": ("alphanumeric share of characters", False),
    "dup_cluster_size": ("duplicate-cluster size", True),
    "tokens": ("tokens per document", True),
}
QUANTILES = (0.1, 0.5, 0.9)
BINS = 30
#: Where a data stage's statistics go, beside its report: ``<reports>/stats/<stage>.json`` and ``.png``.
STATS_DIR = "stats"


def document_features(directory: str) -> dict[str, np.ndarray]:
    """Per document of a shard directory: the :data:`DISTRIBUTIONS` it has (Arrow compute, a shard at a
    time, so memory is one shard)."""
    parts: dict[str, list[np.ndarray]] = {}
    for path in list_shards(directory):
        table = read_shard(path)
        content = table["content"]
        chars = pc.utf8_length(content).to_numpy(zero_copy_only=False).astype(np.float64)
        newlines = pc.count_substring(content, "\n").to_numpy(zero_copy_only=False).astype(np.float64)
        ends_open = ~pc.ends_with(content, "\n").to_numpy(zero_copy_only=False) & (chars > 0)
        lines = newlines + ends_open
        alnum = pc.count_substring_regex(content, r"[\p{L}\p{N}]").to_numpy(zero_copy_only=False)
        values = {
            "length_bytes": table["size_bytes"].to_numpy(zero_copy_only=False).astype(np.float64),
            "lines": lines,
            "mean_line_length": chars / np.maximum(lines, 1),
            "alnum_fraction": alnum / np.maximum(chars, 1),
        }
        if "dup_cluster_size" in table.column_names:
            values["dup_cluster_size"] = table["dup_cluster_size"].to_numpy().astype(np.float64)
        for name, column in values.items():
            parts.setdefault(name, []).append(column)
    return {name: np.concatenate(columns) for name, columns in parts.items()}


def summarize(values: np.ndarray, log: bool) -> dict[str, Any]:
    """Count, mean, quantiles and a histogram (log-spaced bins when ``log``) of one distribution."""
    if len(values) == 0:
        return {"count": 0}
    low, high = float(values.min()), float(values.max())
    if log:
        start = max(low, 1.0)
        edges = np.geomspace(start, max(high, start + 1), BINS + 1)
    else:
        edges = np.linspace(low, high if high > low else low + 1, BINS + 1)
    counts, edges = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return {
        "count": len(values),
        "mean": float(values.mean()),
        **{f"p{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES},
        "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
    }


def stage_statistics(before: str | None, after: str) -> dict[str, dict[str, Any]]:
    """Every distribution of the documents before (a stage's input) and after (its output) it."""
    sides = {"after": document_features(after)}
    if before is not None:
        sides["before"] = document_features(before)
    return {
        name: {side: summarize(features[name], log) for side, features in sides.items() if name in features}
        for name, (_, log) in DISTRIBUTIONS.items()
        if any(name in features for features in sides.values())
    }


def plot_statistics(statistics: dict[str, dict[str, Any]], title: str, path: str | Path) -> None:
    """One panel per distribution, before and after overlaid as step histograms (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in DISTRIBUTIONS if name in statistics]
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        label, log = DISTRIBUTIONS[name]
        for side, style in (("before", "--"), ("after", "-")):
            summary = statistics[name].get(side)
            if not summary or not summary.get("count"):
                continue
            histogram = summary["histogram"]
            axis.stairs(
                histogram["counts"],
                histogram["edges"],
                linestyle=style,
                label=f"{side} ({summary['count']:,})",
            )
        axis.set_xscale("log" if log else "linear")
        axis.set_title(label, fontsize=9)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def token_statistics(before: str | None, after: str) -> dict[str, dict[str, Any]]:
    """Tokens per training document of a tokenize output (its ``train.docs.npy`` offsets)."""
    starts = np.load(Path(after) / "train.docs.npy")
    total = (Path(after) / "train.bin").stat().st_size // np.dtype(_token_dtype(after)).itemsize
    lengths = np.diff(np.append(starts, total)).astype(np.float64)
    return {"tokens": {"after": summarize(lengths, log=True)}}


def _token_dtype(directory: str) -> str:
    import json

    return str(json.loads((Path(directory) / "index.json").read_text(encoding="utf-8"))["dtype"])


def write_statistics(stage: str, statistics: dict[str, dict[str, Any]], directory: Path) -> list[Artifact]:
    """``<directory>/<stage>.json`` and ``.png`` of a stage's statistics; the artifacts to log."""
    directory.mkdir(parents=True, exist_ok=True)
    table, plot = directory / f"{stage}.json", directory / f"{stage}.png"
    write_json(table, statistics)
    plot_statistics(statistics, f"{stage}: before and after", plot)
    return [Artifact(str(table), "corpus_stats"), Artifact(str(plot), "corpus_stats")]
