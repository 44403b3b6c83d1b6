"""The end-of-run summary: per stage files and bytes in/out, drops per rule, and where results are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.dvc_project import stage_names
from components.report import read_report


def load_reports(
    reports_dir: str | Path = "reports", dvc_file: str | Path = "dvc.yaml"
) -> dict[str, dict[str, Any]]:
    """The reports that exist, keyed by stage, in pipeline order."""
    reports = {}
    for stage in stage_names(dvc_file):
        path = Path(reports_dir) / f"{stage}.json"
        if path.exists():
            reports[stage] = read_report(path)
    return reports


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f}"


def format_summary(reports: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the data stages' reports plus the drops of each stage."""
    header = (
        f"{'stage':<10} {'files in':>9} {'files out':>9} {'MB in':>8} {'MB out':>8} {'sec':>7} {'MB/s':>7}"
    )
    lines = [header, "-" * len(header)]
    for stage, report in reports.items():
        if "tokens_trained" in (report.get("metrics") or {}):
            continue  # model stages have their own table (format_model_summary)
        lines.append(
            f"{stage:<10} {report['files_in']:>9,} {report['files_out']:>9,} {_mb(report['bytes_in']):>8} "
            f"{_mb(report['bytes_out']):>8} {report['seconds']:>7.1f} {report['mb_per_s']:>7.2f}"
        )
    for stage, report in reports.items():
        drops = {reason: n for reason, n in (report.get("drops") or {}).items() if n}
        if drops:
            listed = ", ".join(
                f"{reason}={n:,}" for reason, n in sorted(drops.items(), key=lambda kv: -kv[1])
            )
            lines.append(f"drops[{stage}]: {listed}")
        metrics = report.get("metrics") or {}
        if stage == "dedup" and "dedup_ratio" in metrics:
            lines.append(
                f"dedup ratio: {metrics['dedup_ratio']:.2%} of files, "
                f"{metrics.get('dedup_byte_ratio', 0.0):.2%} of bytes removed"
            )
    return "\n".join(lines)


#: Data stages whose reports carry ``details.languages`` (components/corpus_stats.py), in order.
LANGUAGE_STAGES = ("ingest", "curate", "dedup", "clean")


def format_language_summary(reports: dict[str, dict[str, Any]], eval_report: dict[str, Any]) -> str:
    """Per language: files after each data stage, files dropped, MB and training tokens at the end, and
    the held-out bits per byte of the last evaluated model."""
    stages = [
        stage for stage in LANGUAGE_STAGES if "languages" in (reports.get(stage, {}).get("details") or {})
    ]
    if not stages:
        return ""
    per_stage = {stage: reports[stage]["details"]["languages"] for stage in stages}
    tokens = (reports.get("tokenize", {}).get("details") or {}).get("languages") or {}
    models = eval_report.get("models") or {}
    order = (eval_report.get("settings") or {}).get("models") or list(models)
    last = next((name for name in reversed(order) if name in models), None)
    languages = sorted({lang for counts in per_stage.values() for lang in counts})
    titles = [*(f"{stage:>8}" for stage in stages), f"{'dropped':>8}", f"{'MB':>7}", f"{'train tokens':>12}"]
    header = " ".join([f"{'language':<20}", *titles, f"{(last or '') + ' val bpb':>20}"])
    lines = [header, "-" * len(header)]
    for lang in languages:
        counts = [per_stage[stage].get(lang, {}) for stage in stages]
        val_bpb = models.get(last, {}).get(f"val.{lang}.bpb") if last else None
        train_tokens = (tokens.get(lang) or {}).get("train_tokens_written")
        cells = [
            *(f"{c.get('files', 0):>8,}" for c in counts),
            f"{sum(c.get('dropped', 0) for c in counts):>8,}",
            f"{_mb(counts[-1].get('bytes', 0)):>7}",
            _cell(train_tokens, "{:>12,}"),
            _cell(val_bpb, "{:>20.3f}"),
        ]
        lines.append(" ".join([f"{lang:<20}", *cells]))
    return "\n".join(lines)


#: Report metrics of the model stages shown in the summary: (metric, column title, format).
MODEL_COLUMNS = [
    ("tokens_trained", "tokens", "{:>12,.0f}"),
    ("final_val_bpb", "train-val bpb", "{:>13.3f}"),
    ("mean_tokens_per_s", "tokens/s", "{:>9,.0f}"),
    ("mean_mfu", "MFU", "{:>6.1%}"),
]


def _cell(value: Any, fmt: str) -> str:
    return fmt.format(value) if value is not None else f"{'-':>{len(fmt.format(0))}}"


def format_model_summary(reports: dict[str, dict[str, Any]]) -> str:
    """A table of the trained model stages: tokens, training's val bits per byte, speed; empty if none."""
    rows = {stage: r.get("metrics") or {} for stage, r in reports.items()}
    rows = {stage: metrics for stage, metrics in rows.items() if "tokens_trained" in metrics}
    if not rows:
        return ""
    titles = [f"{title:>{len(fmt.format(0))}}" for _, title, fmt in MODEL_COLUMNS]
    lines = [f"{'model':<10} " + " ".join(titles)]
    lines.append("-" * len(lines[0]))
    for stage, metrics in rows.items():
        lines.append(
            f"{stage:<10} " + " ".join(_cell(metrics.get(key), fmt) for key, _, fmt in MODEL_COLUMNS)
        )
    return "\n".join(lines)


def eval_rows(models: dict[str, dict[str, Any]]) -> list[str]:
    """The metrics of the eval summary, in order: per benchmark pass@1 and gold bpb, then the held-out
    bits per byte (all, then per language) and next-line exact match; only those some model has."""
    present = {name for scores in models.values() for name in scores if f"{name}.ci_low" in scores}
    benchmarks = sorted(
        {name.rsplit(".", 1)[0] for name in present if name.endswith((".pass_at_1", ".gold_bpb"))}
    )
    order = [f"{b}.{metric}" for b in benchmarks for metric in ("pass_at_1", "gold_bpb")]
    order += [
        "val.bpb",
        *sorted(n for n in present if n.startswith("val.") and n != "val.bpb"),
        "line.exact_match",
    ]
    return [name for name in order if name in present]


def _scored(scores: dict[str, Any], metric: str) -> str:
    if metric not in scores:
        return "-"
    fmt = "{:.1%}" if "pass_at" in metric or "exact_match" in metric else "{:.3f}"
    low, high = scores[f"{metric}.ci_low"], scores[f"{metric}.ci_high"]
    return f"{fmt.format(scores[metric])} [{fmt.format(low)}, {fmt.format(high)}]"


def format_eval_summary(eval_report: dict[str, Any]) -> str:
    """Each evaluated model's scores with their 95% intervals (a row per metric, a column per model),
    then the differences between consecutive models that exceed their paired interval."""
    models: dict[str, dict[str, Any]] = eval_report.get("models") or {}
    order = (eval_report.get("settings") or {}).get("models") or []  # pipeline order (the file sorts keys)
    models = dict(
        sorted(models.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    )
    metrics = eval_rows(models)
    if not metrics:
        return ""
    width = max(len(name) for name in metrics) + 1
    cells = {model: [_scored(scores, metric) for metric in metrics] for model, scores in models.items()}
    widths = {model: max(len(model), *(len(cell) for cell in column)) for model, column in cells.items()}
    lines = [f"{'metric (95% interval)':<{width}} " + " ".join(f"{m:>{widths[m]}}" for m in models)]
    lines.append("-" * len(lines[0]))
    for row, metric in enumerate(metrics):
        lines.append(f"{metric:<{width}} " + " ".join(f"{cells[m][row]:>{widths[m]}}" for m in models))
    for pair, compared in (eval_report.get("comparisons") or {}).items():
        apart = [
            f"{metric} {result['difference']:+.3f} ({result['verdict']})"
            for metric, result in compared.items()
            if result.get("significant")
        ]
        lines.append(f"{pair}: " + ("; ".join(apart) if apart else "no difference beyond the intervals"))
    return "\n".join(lines)


#: The alignment figures of the summary: (report metric suffix, row title, format).
ALIGNMENT_ROWS = [
    ("heldout_pass_rate", "held-out pass rate (greedy)", "{:.1%}"),
    ("ranking_accuracy", "ranking accuracy", "{:.1%}"),
    ("ranking_pairs", "response pairs ranked", "{:.0f}"),
    ("heldout_rank_loss", "held-out ranking loss", "{:.4f}"),
    ("heldout_sft_loss", "held-out SFT loss", "{:.3f}"),
]


def format_alignment_summary(reports: dict[str, dict[str, Any]]) -> str:
    """The problems the chain tested and the policy before (sft) and after alignment on the held-out
    problems, with the pass rate's interval; empty without an align report."""
    metrics = reports.get("align", {}).get("metrics") or {}
    if not any(key.startswith("before.") for key in metrics):
        return ""
    lines = []
    problems = reports.get("problems", {}).get("metrics") or {}
    if problems:
        train, heldout = problems.get("problems_train", 0), problems.get("problems_heldout", 0)
        passing = problems.get("canonical_pass_rate", 0)
        lines.append(
            f"problems: {train:.0f} train, {heldout:.0f} held out; "
            f"canonical solutions passing their own tests: {passing:.0%}"
        )
    evolved = reports.get("evol", {}).get("metrics") or {}
    if evolved:
        teacher = (reports["evol"].get("details") or {}).get("teacher", "?")
        lines.append(
            f"evol-instruct: {evolved.get('seeds', 0):.0f} seeds, {evolved.get('evolved', 0):.0f} evolved, "
            f"{evolved.get('kept', 0):.0f} kept after the filters (teacher: {teacher})"
        )
    lines.append(f"{'alignment (held-out problems)':<30} {'before (sft)':>24} {'after (align)':>24}")
    for key, title, fmt in ALIGNMENT_ROWS:
        cells = []
        for when in ("before", "after"):
            value = metrics.get(f"{when}.{key}")
            low, high = metrics.get(f"{when}.{key}.ci_low"), metrics.get(f"{when}.{key}.ci_high")
            cell = "-" if value is None else fmt.format(value)
            if value is not None and low is not None and high is not None:
                cell += f" [{fmt.format(low)}, {fmt.format(high)}]"
            cells.append(cell)
        lines.append(f"{title:<30} {cells[0]:>24} {cells[1]:>24}")
    return "\n".join(lines)


def format_registry_summary(reports: dict[str, dict[str, Any]]) -> str:
    """The registered model version, its aliases and gate outcome, and how to serve the champion."""
    details = reports.get("register", {}).get("details") or {}
    if "version" not in details:
        return ""
    aliases = ", ".join(details.get("aliases") or []) or "none (gates failed; see reports/register.json)"
    return "\n".join(
        [
            f"registered: models:/{details['model']}/{details['version']}   aliases: {aliases}",
            f"serve the champion: codemill serve   (OpenAI + TGI API on 127.0.0.1:8000, "
            f"follows models:/{details['model']}@champion)",
        ]
    )


def where_results_are(tracking_uri: str) -> str:
    """Closing lines: where the data, reports and MLflow runs are, and how to look at them."""
    return "\n".join(
        [
            "Results:",
            "  data shards       data/<stage>/part-*.parquet   (versions: dvc.lock, `dvc exp show`)",
            "  stage reports     reports/<stage>.json          (`dvc metrics show`)",
            "  data docs (GX)    reports/data_docs/index.html",
            f"  MLflow runs       {tracking_uri}",
            f"  MLflow UI         mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000",
        ]
    )
