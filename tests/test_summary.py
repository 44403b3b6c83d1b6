"""The end-of-run summary reads the reports in DAG order and shows what a user checks first."""

from __future__ import annotations

from pathlib import Path

from components.dvc_project import stage_names
from components.report import StageReport
from components.summary import (
    format_eval_summary,
    format_language_summary,
    format_model_summary,
    format_registry_summary,
    format_summary,
    load_reports,
)
from tests.conftest import PROJECT_ROOT


def test_stages_come_from_dvc_yaml_in_order() -> None:
    stages = stage_names(PROJECT_ROOT / "dvc.yaml")
    assert stages[:6] == ["sources", "ingest", "curate", "dedup", "clean", "validate"]


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


def _scored(value: float, low: float, high: float, name: str) -> dict[str, float]:
    return {name: value, f"{name}.ci_low": low, f"{name}.ci_high": high, f"{name}.n": 164.0}


def test_eval_table_shows_each_score_with_its_interval_and_the_differences_beyond_them() -> None:
    report = {
        "models": {
            "anneal": {**_scored(0.25, 0.2, 0.3, "humaneval.pass_at_1"), **_scored(2.1, 2.0, 2.2, "val.bpb")},
            "sft": {
                **_scored(0.5, 0.4, 0.6, "humaneval.pass_at_1"),
                **_scored(2.3, 2.2, 2.4, "val.bpb"),
                **_scored(1.9, 1.8, 2.0, "humaneval.gold_bpb"),
                "humaneval.problems": 164.0,
            },
        },
        "comparisons": {
            "anneal->sft": {
                "val.bpb": {"difference": 0.2, "significant": True, "verdict": "worse"},
                "humaneval.pass_at_1": {
                    "difference": 0.25,
                    "significant": False,
                    "verdict": "within the interval",
                },
            }
        },
    }
    lines = format_eval_summary(report).splitlines()
    assert lines[0].split()[-2:] == ["anneal", "sft"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows)[:3] == ["humaneval.pass_at_1", "humaneval.gold_bpb", "val.bpb"]
    assert "25.0% [20.0%, 30.0%]" in rows["humaneval.pass_at_1"] and "2.300 [2.200, 2.400]" in rows["val.bpb"]
    assert rows["humaneval.gold_bpb"].split()[1] == "-"  # anneal has no gold bpb here
    assert lines[-1] == "anneal->sft: val.bpb +0.200 (worse)"
    assert format_eval_summary({}) == ""


def test_registry_lines_name_version_aliases_and_serve_command() -> None:
    details = {"model": "codemill-tiny", "version": "3", "aliases": ["challenger", "champion"]}
    text = format_registry_summary({"register": {"details": details}})
    assert "models:/codemill-tiny/3" in text and "aliases: challenger, champion" in text
    assert "codemill serve" in text and "follows models:/codemill-tiny@champion" in text
    failed = format_registry_summary({"register": {"details": {**details, "aliases": []}}})
    assert "gates failed" in failed
    assert format_registry_summary({}) == ""


def test_alignment_summary_shows_the_held_out_figures_before_and_after_with_intervals() -> None:
    from components.summary import format_alignment_summary

    align = {
        "before.heldout_pass_rate": 0.25, "before.heldout_pass_rate.ci_low": 0.0,
        "before.heldout_pass_rate.ci_high": 0.5, "after.heldout_pass_rate": 0.5,
        "after.heldout_pass_rate.ci_low": 0.25, "after.heldout_pass_rate.ci_high": 0.75,
        "before.ranking_accuracy": 0.4, "after.ranking_accuracy": 0.8,
    }  # fmt: skip
    problems = {"problems_train": 14, "problems_heldout": 9, "canonical_pass_rate": 0.85}
    evolved = {"metrics": {"seeds": 8, "evolved": 13, "kept": 2}, "details": {"teacher": "http://t/v1"}}
    reports = {"align": {"metrics": align}, "problems": {"metrics": problems}, "evol": evolved}
    text = format_alignment_summary(reports)
    assert "14 train, 9 held out" in text and "85%" in text
    assert "8 seeds, 13 evolved, 2 kept after the filters (teacher: http://t/v1)" in text
    assert "25.0% [0.0%, 50.0%]" in text and "50.0% [25.0%, 75.0%]" in text
    assert "40.0%" in text and "80.0%" in text
    assert format_alignment_summary({"sft": {"metrics": {}}}) == ""


def test_language_table_follows_each_language_through_the_stages() -> None:
    def stage(languages: dict[str, tuple[int, int, int]]) -> dict:
        return {
            "details": {
                "languages": {
                    k: dict(zip(("files", "bytes", "dropped"), v, strict=True)) for k, v in languages.items()
                }
            }
        }

    reports = {
        "ingest": stage({"python": (10, 5_000_000, 2), "c": (6, 2_000_000, 0)}),
        "curate": stage({"python": (8, 4_000_000, 2), "c": (5, 1_500_000, 1)}),
        "dedup": stage({"python": (7, 3_500_000, 1), "c": (5, 1_500_000, 0)}),
        "clean": stage({"python": (7, 3_400_000, 0), "c": (4, 1_200_000, 1)}),
        "tokenize": {"details": {"languages": {"python": {"train_tokens_written": 12345}}}},
    }
    evaluated = {"settings": {"models": ["pretrain", "sft"]}, "models": {"sft": {"val.python.bpb": 1.234}}}
    header, _, c_row, python_row = format_language_summary(reports, evaluated).splitlines()
    assert header.split() == [
        "language",
        "ingest",
        "curate",
        "dedup",
        "clean",
        "dropped",
        "MB",
        "train",
        "tokens",
        "sft",
        "val",
        "bpb",
    ]
    assert c_row.split() == ["c", "6", "5", "5", "4", "2", "1.2", "-", "-"]
    assert python_row.split() == ["python", "10", "8", "7", "7", "5", "3.4", "12,345", "1.234"]
    assert format_language_summary({}, {}) == ""
