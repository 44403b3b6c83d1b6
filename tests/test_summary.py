"""The end-of-run summary reads the reports in DAG order and shows what a user checks first."""

from __future__ import annotations

from pathlib import Path

from components.dvc_project import stage_names
from components.report import StageReport
from components.summary import format_model_summary, format_registry_summary, format_summary, load_reports
from tests.conftest import PROJECT_ROOT


def test_stages_come_from_dvc_yaml_in_order() -> None:
    stages = stage_names(PROJECT_ROOT / "dvc.yaml")
    assert stages[:5] == ["ingest", "curate", "dedup", "clean", "validate"]


def test_summary_shows_counts_drops_and_dedup_ratio(tmp_path: Path) -> None:
    dedup = StageReport("dedup", files_in=100, files_out=80, bytes_in=2_000_000, bytes_out=1_500_000)
    dedup.seconds = 2.0
    dedup.merge_drops({"near_duplicate": 15, "exact_duplicate": 5, "repo_duplicate": 0})
    dedup.metrics.update(dedup_ratio=0.2, dedup_byte_ratio=0.25)
    dedup.write(tmp_path / "reports" / "dedup.json")
    (tmp_path / "dvc.yaml").write_text("stages:\n  ingest: {cmd: x}\n  dedup: {cmd: y}\n")

    reports = load_reports(tmp_path / "reports", tmp_path / "dvc.yaml")
    text = format_summary(reports)
    assert list(reports) == ["dedup"]
    assert "dedup" in text and "100" in text and "80" in text and "2.0" in text and "1.5" in text
    assert "drops[dedup]: near_duplicate=15, exact_duplicate=5" in text
    assert "repo_duplicate" not in text
    assert "dedup ratio: 20.00% of files, 25.00% of bytes removed" in text
    assert format_model_summary(reports) == ""


EMPTY = {"files_in": 1, "files_out": 1, "bytes_in": 1, "bytes_out": 1, "seconds": 1.0, "mb_per_s": 0.0}


def test_model_table_lists_stages_that_trained() -> None:
    reports = {
        "pretrain": {"metrics": {"tokens_trained": 614400, "final_val_bpb": 2.5, "mean_tokens_per_s": 5321}},
        "dedup": {"metrics": {"dedup_ratio": 0.1}},
    }
    assert "pretrain" not in format_summary({**reports, "dedup": {**reports["dedup"], **EMPTY}})
    lines = format_model_summary(reports).splitlines()
    assert len(lines) == 3
    assert lines[2].split() == ["pretrain", "614,400", "2.500", "5,321", "-"]


def test_model_table_adds_eval_scores_and_evaluated_only_stages() -> None:
    reports = {"anneal": {"metrics": {"tokens_trained": 1000, "final_val_bpb": 2.0}}}
    scores = {"anneal": {"pass_at_1": 0.25, "bpb": 2.1}, "sft": {"pass_at_1": 0.5, "bpb": 2.3}}
    lines = format_model_summary(reports, scores).splitlines()
    assert lines[0].split()[-3:] == ["pass@1", "eval", "bpb"]
    assert lines[2].split() == ["anneal", "1,000", "2.000", "-", "-", "25.0%", "2.100"]
    assert lines[3].split() == ["sft", "-", "-", "-", "-", "50.0%", "2.300"]


def test_registry_lines_name_version_aliases_and_serve_command() -> None:
    details = {"model": "codemill-tiny", "version": "3", "aliases": ["challenger", "champion"]}
    text = format_registry_summary({"register": {"details": details}})
    assert "models:/codemill-tiny/3" in text and "aliases: challenger, champion" in text
    assert "codemill serve --port 5001" in text
    failed = format_registry_summary({"register": {"details": {**details, "aliases": []}}})
    assert "gates failed" in failed
    assert format_registry_summary({}) == ""
