"""Tracking conventions against a real MLflow store and a real DVC repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from components import tracking
from components.report import Artifact, StageReport
from components.stage_runner import Stage, StageIO, run_stage
from tests.conftest import make_params, write_files


def test_dvc_md5_matches_what_dvc_records(tmp_path: Path) -> None:
    write_files(tmp_path, {"out/part-00000.parquet": b"\x00\x01abc", "out/sub/x.txt": "hello\n"})
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "out"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((tmp_path / "out.dvc").read_text())["outs"][0]["md5"]
    assert tracking.dvc_md5(str(tmp_path / "out")) == recorded
    assert tracking.dvc_md5(str(tmp_path / "out" / "sub" / "x.txt")) == "b1946ac92492d2347c6235b4d2611184"


def _fake_dedup(config, context, io: StageIO) -> StageReport:
    out = Path(io.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "part-00000.parquet").write_bytes(b"data")
    (out.parent / "notes.txt").write_text("what the stage wants logged\n")
    report = StageReport("dedup", files_in=3, files_out=2, bytes_in=30, bytes_out=20)
    report.count_drop("exact_duplicate")
    report.params["dedup.extra"] = {"chosen": 1}
    report.artifacts.append(Artifact(str(out.parent / "notes.txt"), "notes"))
    return report


FAKE_DEDUP = Stage("dedup", _fake_dedup)


@pytest.mark.usefixtures("mlflow_uri")
def test_stage_runs_nest_under_one_parent_with_tags_params_and_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = make_params(dedup={"level": "exact"})
    write_files(tmp_path, {"in/part-00000.parquet": b"in"})
    for _ in range(2):
        run_stage(FAKE_DEDUP, params, StageIO({"documents": "in"}, "out"), "reports/dedup.json")

    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "pipeline"]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) == "dedup"]
    assert len(parents) == 1 and len(children) == 2
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert child.data.params["dedup.level"] == "exact"
    assert child.data.metrics["drops.exact_duplicate"] == 1
    assert child.data.tags[f"{tracking.TAG_OUT_MD5}.out"] == tracking.dvc_md5("out")
    assert tracking.TAG_GIT_COMMIT in child.data.tags
    contexts = {d.tags[0].value for d in child.inputs.dataset_inputs}
    assert contexts == {"input", "output"}
    # What the report asks for is logged by tracking, not by the stage.
    assert child.data.params["dedup.extra"] == '{"chosen": 1}'
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id, "notes")}
    assert artifacts == {"notes/notes.txt"}
    # The experiment opens in the MLflow UI's model-training view; the parent's name tells it apart.
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    assert parents[0].info.run_name.startswith("pipeline dvc repro 20")


@pytest.mark.usefixtures("mlflow_uri")
def test_parent_run_from_environment_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = make_params()
    experiment_id = tracking.configure(params.tracking)
    parent = mlflow.MlflowClient().create_run(experiment_id).info.run_id
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    run_stage(FAKE_DEDUP, params, StageIO({}, "out"), "reports/dedup.json")
    (child,) = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="tags.`codemill.stage` = 'dedup'", output_format="list"
    )
    assert child.data.tags["mlflow.parentRunId"] == parent


def test_parent_session_is_not_reused_across_tracking_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _migrated_mlflow_db: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    params = make_params()
    parents = []
    for name in ("a.db", "b.db"):
        shutil.copy(_migrated_mlflow_db, tmp_path / name)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / name}")
        run_stage(FAKE_DEDUP, params, StageIO({}, "out"), "reports/dedup.json")
        (child,) = mlflow.search_runs(
            experiment_names=[params.tracking.experiment],
            filter_string="tags.`codemill.stage` = 'dedup'",
            output_format="list",
        )
        parent_id = child.data.tags["mlflow.parentRunId"]
        assert mlflow.MlflowClient().get_run(parent_id).data.tags[tracking.TAG_KIND] == "pipeline"
        parents.append(parent_id)
    assert parents[0] != parents[1]
