"""Ablation sweeps: the comparison on its own, and the flow end to end over real DVC experiments."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import pytest
import yaml

from components import ablation as ab
from components.cli import main as cli_main
from tests.conftest import PROJECT_ROOT, make_dvc_project, run_checked

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def test_comparison_metrics_pick_what_matters_from_the_reports_that_exist() -> None:
    reports = {
        "reports/ingest.json": {"files_out": 50, "metrics": {"repos": 3}},
        "reports/dedup.json": {"files_out": 40, "bytes_out": 9000, "metrics": {"dedup_ratio": 0.2}},
        "reports/tokenize.json": {"metrics": {"tokens.train": 1234, "tokens.val": 99}},
        "reports/pretrain.json": {"metrics": {"final_val_bpb": 2.5, "tokens_trained": 10}},
        "reports/sft.json": {"metrics": {"final_val_bpb": 2.25}},
        "reports/eval.json": {
            "models": {
                "pretrain": {
                    "humaneval.pass_at_1": 0.0,
                    "humaneval.pass_at_1.ci_low": 0.0,
                    "humaneval.pass_at_1.ci_high": 0.0,
                    "humaneval.problems": 164.0,  # no interval: a count, not a score
                    "val.bpb": 2.4,
                    "val.bpb.ci_low": 2.3,
                    "val.bpb.ci_high": 2.5,
                }
            }
        },
    }
    assert ab.comparison_metrics(reports) == {
        "dedup.files_out": 40.0,
        "dedup.bytes_out": 9000.0,
        "dedup.dedup_ratio": 0.2,
        "tokens.train": 1234.0,
        "pretrain.val_bpb": 2.5,
        "sft.val_bpb": 2.25,
        "pretrain.humaneval.pass_at_1": 0.0,
        "pretrain.humaneval.pass_at_1.ci_low": 0.0,
        "pretrain.humaneval.pass_at_1.ci_high": 0.0,
        "pretrain.val.bpb": 2.4,
        "pretrain.val.bpb.ci_low": 2.3,
        "pretrain.val.bpb.ci_high": 2.5,
    }
    assert ab.comparison_metrics({"reports/ingest.json": {"files_out": 5}}) == {}


def test_table_and_plot_of_a_numeric_key(tmp_path: Path) -> None:
    rows = [
        {"pretrain.lr": "0.001", "experiment": "a", "run_id": "r1", "pretrain.val_bpb": 2.5},
        {
            "pretrain.lr": "0.003",
            "experiment": "b",
            "run_id": "r2",
            "pretrain.val_bpb": 2.0,
            "sft.val_bpb": 1.5,
        },
    ]
    table, plot = ab.write_comparison("pretrain.lr", rows, tmp_path)
    with table.open() as handle:
        read = list(csv.DictReader(handle))
    assert [row["pretrain.lr"] for row in read] == ["0.001", "0.003"]
    assert read[0]["sft.val_bpb"] == "" and read[1]["sft.val_bpb"] == "1.5"
    assert plot.read_bytes().startswith(PNG_HEADER)
    assert "| 0.003 | 2 | 1.5 |" in ab.table_markdown("pretrain.lr", rows)


def test_intervals_mark_differences_and_all_zero_panels_are_left_out(tmp_path: Path) -> None:
    def arm(value: str, bpb: float, low: float, high: float) -> dict:
        return {
            "dedup.level": value, "experiment": value, "run_id": value,
            "sft.val.bpb": bpb, "sft.val.bpb.ci_low": low, "sft.val.bpb.ci_high": high,
            "sft.humaneval.pass_at_1": 0.0, "sft.humaneval.pass_at_1.ci_low": 0.0,
            "sft.humaneval.pass_at_1.ci_high": 0.0,
        }  # fmt: skip

    rows = [arm("none", 2.10, 2.08, 2.12), arm("exact", 2.11, 2.09, 2.13), arm("file", 2.02, 2.00, 2.04)]
    assert ab.beyond_intervals(rows, "sft.val.bpb") == [False, False, True]
    assert ab.all_zero(rows, "sft.humaneval.pass_at_1") and not ab.all_zero(rows, "sft.val.bpb")
    markdown = ab.table_markdown("dedup.level", rows)
    assert (
        "| file | 2.02 [2, 2.04] * |" in markdown
        and "does not overlap that of dedup.level = none" in markdown
    )
    assert ab.metric_columns(rows) == ["sft.val.bpb", "sft.humaneval.pass_at_1"]
    table, plot = ab.write_comparison("dedup.level", rows, tmp_path)
    assert "sft.val.bpb.ci_low" in table.read_text().splitlines()[0]
    assert plot.read_bytes().startswith(PNG_HEADER)


def test_sweeps_run_every_stage_but_register_by_default() -> None:
    stages = ab.default_targets(PROJECT_ROOT / "dvc.yaml")
    assert "register" not in stages and {"dedup", "evaluate"} <= set(stages)


def test_bad_values_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = PROJECT_ROOT / "params.yaml"
    assert cli_main(["ablate", "dedup.level", "none", "fuzzy", "--params", str(params)]) == 2
    assert "dedup.level" in capsys.readouterr().err
    assert cli_main(["ablate", "dedup.nonsense", "1", "--params", str(params)]) == 2
    assert "dedup.nonsense" in capsys.readouterr().err
    assert (
        cli_main(["ablate", "pretrain.lr", "--params", str(params)]) == 2
    )  # no values for a non-default key


@pytest.mark.slow
def test_ablation_flow_over_two_mixture_weightings(tmp_path: Path) -> None:
    """Two weightings of C against Python (a key params.yaml does not list yet) on a tiny corpus, through
    the data stages to tokenize: one tagged parent run per value, the stages nested, the comparison."""
    root = tmp_path / "project"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for index, name in enumerate(
        ["textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py", "argparse.py"]
    ):
        repo = root / "corpus" / f"repo{index}"
        repo.mkdir(parents=True)
        (repo / name).write_text((stdlib / name).read_text(encoding="utf-8"), encoding="utf-8")
        body = "\n".join(
            f"int value_{index}_{line}(int x) {{ return x * {line} + {index}; }}" for line in range(40)
        )
        (repo / f"values{index}.c").write_text(body + "\n", encoding="utf-8")
    env = make_dvc_project(
        root,
        params={
            "ingest": {"sources": [{"kind": "local", "paths": ["corpus"]}], "languages": ["python", "c"]},
            "curate": {"holdout_fraction": 0.0},  # all 12 files reach dedup
            "tokenize": {"vocab_size": 400, "val_fraction": 0.2},
            "executor": {"workers": 1},
        },
        stages=["ingest", "curate", "dedup", "clean", "validate", "tokenize"],
    )
    env = {key: value for key, value in env.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    key = "tokenize.mixture.languages.c"

    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "ablate", key, "1", "3"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Two tagged parent runs, one per value, with the stage runs nested under them.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("codemill").experiment_id
    parents = client.search_runs(
        [experiment_id], f"tags.ablation = '{key}' and tags.`codemill.kind` = 'pipeline'"
    )
    by_value = {run.data.tags["ablation.value"]: run for run in parents}
    assert sorted(by_value) == ["1", "3"]
    (summary,) = client.search_runs([experiment_id], "tags.`codemill.kind` = 'ablation'")
    for value, parent in by_value.items():
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["dvc.exp_name"] == f"ablation-{key}-{value}"
        assert parent.data.tags["ablation.sweep"] == summary.info.run_id
    children = {
        value: {
            run.data.tags["codemill.stage"]: run
            for run in client.search_runs(
                [experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
            )
        }
        for value, parent in by_value.items()
    }
    assert set(children["1"]) == {"sources", "ingest", "curate", "dedup", "clean", "validate", "tokenize"}
    # ingest to clean come from DVC's run cache; validate's Data Docs are not cached, so it reruns.
    assert set(children["3"]) == {"sources", "validate", "tokenize"}
    assert children["3"]["tokenize"].data.params[key] == "3.0"
    assert children["3"]["tokenize"].data.tags["dvc.exp_name"] == f"ablation-{key}-3"

    # The comparison: table and plot on disk and on the summary run.
    with (root / f"reports/ablations/{key}.csv").open() as handle:
        table = {row[key]: row for row in csv.DictReader(handle)}
    assert list(table) == ["1", "3"]
    assert float(table["3"]["tokens.train"]) > float(table["1"]["tokens.train"])
    assert float(table["3"]["dedup.files_out"]) == float(table["1"]["dedup.files_out"]) == 12
    assert (root / f"reports/ablations/{key}.png").read_bytes().startswith(PNG_HEADER)
    logged = {item.path for item in client.list_artifacts(summary.info.run_id, "ablation")}
    assert logged == {f"ablation/{key}.csv", f"ablation/{key}.png"}
    assert summary.info.status == "FINISHED"

    # The workspace is left as it was; the experiments are DVC's.
    assert yaml.safe_load((root / "params.yaml").read_text())["tokenize"]["mixture"]["languages"] == {}
    assert run_checked(["git", "status", "--porcelain", "--untracked-files=no"], root, env) == ""
    listed = run_checked([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], root, env).split()
    assert sorted(listed) == [f"ablation-{key}-1", f"ablation-{key}-3"]

    # Prefect: the flow run completed and published the two artifacts.
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        states = db.execute(
            "select fr.state_type from flow_run fr join flow f on f.id = fr.flow_id where f.name = 'ablation'"
        ).fetchall()
        artifacts = dict(db.execute("select key, type from artifact").fetchall())
    assert states == [("COMPLETED",)]
    assert artifacts == {
        "ablation-tokenize-mixture-languages-c": "table",
        "ablation-tokenize-mixture-languages-c-summary": "markdown",
    }
