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


#: Report metrics of the model stages shown in the summary: (metric, column title, format).
MODEL_COLUMNS = [
    ("tokens_trained", "tokens", "{:>12,.0f}"),
    ("final_val_bpb", "val bpb", "{:>8.3f}"),
    ("mean_tokens_per_s", "tokens/s", "{:>9,.0f}"),
    ("mean_mfu", "MFU", "{:>6.1%}"),
]


#: Scores from ``reports/eval.json`` shown beside them: (score, column title, format).
EVAL_COLUMNS = [
    ("pass_at_1", "pass@1", "{:>7.1%}"),
    ("bpb", "eval bpb", "{:>8.3f}"),
]


def _cell(value: Any, fmt: str) -> str:
    return fmt.format(value) if value is not None else f"{'-':>{len(fmt.format(0))}}"


def format_model_summary(
    reports: dict[str, dict[str, Any]], eval_scores: dict[str, dict[str, Any]] | None = None
) -> str:
    """A table of the model stages (trained, or evaluated): training figures, then HumanEval pass@1 and
    bits per byte from the evaluate stage; empty if none ran."""
    eval_scores = eval_scores or {}
    rows = {stage: r.get("metrics") or {} for stage, r in reports.items()}
    rows = {stage: metrics for stage, metrics in rows.items() if "tokens_trained" in metrics}
    rows.update({stage: {} for stage in eval_scores if stage not in rows})
    if not rows:
        return ""
    columns = MODEL_COLUMNS + (EVAL_COLUMNS if eval_scores else [])
    titles = [f"{title:>{len(fmt.format(0))}}" for _, title, fmt in columns]
    lines = [f"{'model':<10} " + " ".join(titles)]
    lines.append("-" * len(lines[0]))
    for stage, metrics in rows.items():
        cells = [_cell(metrics.get(key), fmt) for key, _, fmt in MODEL_COLUMNS]
        if eval_scores:
            cells += [_cell(eval_scores.get(stage, {}).get(key), fmt) for key, _, fmt in EVAL_COLUMNS]
        lines.append(f"{stage:<10} " + " ".join(cells))
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
            f"serve the champion: codemill serve --port 5001   (models:/{details['model']}@champion)",
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
