"""End to end through DVC: the data stages in a fresh git copy of the project, as a user runs them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sysconfig
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import make_dvc_project, run_checked

pytestmark = pytest.mark.slow

DATA_STAGES = ["ingest", "curate", "dedup", "clean", "validate"]
DATA_OUTPUTS = ["data/ingest", "data/curate", "data/dedup", "data/clean"]


def _ran(output: str) -> list[str]:
    return [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for output in DATA_OUTPUTS
        for path in sorted((root / output).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git+DVC copy of the project with a small real corpus: stdlib files plus planted copies."""
    root = tmp_path_factory.mktemp("project")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    originals = ["argparse.py", "textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py"]
    for name in originals:
        text = (stdlib / name).read_text(encoding="utf-8")
        (root / "corpus/fork_a").mkdir(parents=True, exist_ok=True)
        (root / "corpus/fork_a" / name).write_text(text, encoding="utf-8")  # exact copy
        (root / "corpus/fork_b").mkdir(parents=True, exist_ok=True)
        (root / "corpus/fork_b" / name).write_text(text.replace("def ", "def  ", 1) + "\n# fork b\n")
    sources = [
        {"kind": "python-stdlib", "name": "stdlib"},
        {"kind": "local", "name": "forks", "paths": ["corpus"]},
    ]
    env = make_dvc_project(root, params={"ingest": {"sources": sources, "max_files": 120}})
    return root, env


def test_repro_runs_every_data_stage_then_nothing(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    first = run_checked(["dvc", "repro", "validate"], root, env)
    assert _ran(first) == DATA_STAGES
    second = run_checked(["dvc", "repro", "validate"], root, env)
    assert _ran(second) == []
    assert "Running stage 'sources'" in second  # the fingerprint runs every time, and changed nothing
    status = run_checked(["dvc", "status", "validate"], root, env)
    assert "up to date" in status

    reports = {s: json.loads((root / "reports" / f"{s}.json").read_text()) for s in DATA_STAGES}
    assert reports["ingest"]["files_out"] > 100
    assert reports["dedup"]["files_out"] < reports["dedup"]["files_in"], "planted copies must be removed"
    assert (root / "reports/data_docs").is_dir()


def test_stage_runs_nest_under_a_parent_and_carry_the_dvc_lock_md5(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("codemill")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`codemill.stage` = 'dedup'")
    run = runs[0]  # newest first
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["codemill.kind"] == "pipeline"
    siblings = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {r.data.tags["codemill.stage"] for r in siblings} == {"sources", *DATA_STAGES}
    lock_md5 = lock["stages"]["dedup"]["outs"][0]["md5"]
    assert run.data.tags["dvc.md5.data/dedup"] == lock_md5
    assert run.data.params["dedup.level"] == "file"


def test_param_change_reruns_only_the_affected_stages(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dedup"]["level"] = "exact"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run_checked(["dvc", "repro", "validate"], root, env)
    assert _ran(output) == ["dedup", "clean", "validate"]
    run_checked(["git", "checkout", "params.yaml"], root, env)
    run_checked(["dvc", "repro", "validate"], root, env)


def test_dvc_experiment_over_dedup_level(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    run_checked(["dvc", "exp", "run", "-n", "dedup-repo", "-S", "dedup.level=repo", "validate"], root, env)
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    experiments = [exp for row in json.loads(shown) for exp in row.get("experiments") or []]
    (experiment,) = [exp for exp in experiments if exp.get("name") == "dedup-repo"]
    (revision,) = experiment["revs"]
    assert revision["data"]["params"]["params.yaml"]["data"]["dedup"]["level"] == "repo"
    assert "dedup-repo" in run_checked(["dvc", "exp", "show", "--csv"], root, env)


def test_rerun_from_scratch_is_byte_identical(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    run_checked(["git", "checkout", "params.yaml"], root, env)
    run_checked(["dvc", "repro", "validate"], root, env)
    before = _hashes(root)
    assert len(before) >= 4
    run_checked(["dvc", "repro", "--force", "--no-run-cache", "validate"], root, env)
    assert _hashes(root) == before


def test_an_edited_and_an_added_source_file_rerun_ingest(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    run_checked(["dvc", "repro", "ingest"], root, env)
    edited = root / "corpus" / "fork_a" / "shlex.py"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nEDITED_MARKER = 1\n", encoding="utf-8")
    added = root / "corpus" / "fork_a" / "added_module.py"
    added.write_text("def added():\n    return 'ADDED_MARKER'\n" * 6, encoding="utf-8")
    changed = run_checked(["dvc", "repro", "ingest"], root, env)
    assert "Running stage 'ingest'" in changed
    rows = [
        row
        for path in sorted((root / "data/ingest").glob("*.parquet"))
        for row in pq.read_table(path).to_pylist()
    ]
    by_path = {(row["repo"], row["path"]): row["content"] for row in rows}
    assert "EDITED_MARKER" in by_path[("forks/fork_a", "shlex.py")]
    assert "ADDED_MARKER" in by_path[("forks/fork_a", "added_module.py")]
    again = run_checked(["dvc", "repro", "ingest"], root, env)
    assert "Running stage 'ingest'" not in again, "an unchanged corpus leaves ingest cached"
