"""End to end through DVC: the data stages in a fresh git copy of the project, as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

DATA_STAGES = ["ingest", "curate", "dedup", "clean", "validate"]
DATA_OUTPUTS = ["data/ingest", "data/curate", "data/dedup", "data/clean"]


def _project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [
        f for f in listed if not f.startswith(("tests/", "bench/", "docs/")) and (PROJECT_ROOT / f).is_file()
    ]


def _sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


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
    for relative in _project_files():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, root / relative)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    originals = ["argparse.py", "textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py"]
    for name in originals:
        text = (stdlib / name).read_text(encoding="utf-8")
        (root / "corpus/fork_a").mkdir(parents=True, exist_ok=True)
        (root / "corpus/fork_a" / name).write_text(text, encoding="utf-8")  # exact copy
        (root / "corpus/fork_b").mkdir(parents=True, exist_ok=True)
        (root / "corpus/fork_b" / name).write_text(text.replace("def ", "def  ", 1) + "\n# fork b\n")

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["sources"] = [
        {"kind": "python-stdlib", "name": "stdlib"},
        {"kind": "local", "name": "forks", "paths": ["corpus"]},
    ]
    params["ingest"]["max_files"] = 220
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("CODEMILL_PARENT_RUN_ID", None)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        _sh(cmd, root, env)
    return root, env


def test_repro_runs_every_data_stage_then_nothing(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    first = _sh(["dvc", "repro", "validate"], root, env)
    assert _ran(first) == DATA_STAGES
    second = _sh(["dvc", "repro", "validate"], root, env)
    assert _ran(second) == []
    status = _sh(["dvc", "status", "validate"], root, env)
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
    assert {r.data.tags["codemill.stage"] for r in siblings} == set(DATA_STAGES)
    lock_md5 = lock["stages"]["dedup"]["outs"][0]["md5"]
    assert run.data.tags["dvc.md5.data/dedup"] == lock_md5
    assert run.data.params["dedup.level"] == "file"


def test_param_change_reruns_only_the_affected_stages(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dedup"]["level"] = "exact"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = _sh(["dvc", "repro", "validate"], root, env)
    assert _ran(output) == ["dedup", "clean", "validate"]
    _sh(["git", "checkout", "params.yaml"], root, env)
    _sh(["dvc", "repro", "validate"], root, env)


def test_dvc_experiment_over_dedup_level(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    _sh(["dvc", "exp", "run", "-n", "dedup-repo", "-S", "dedup.level=repo", "validate"], root, env)
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    experiments = [exp for row in json.loads(shown) for exp in row.get("experiments") or []]
    (experiment,) = [exp for exp in experiments if exp.get("name") == "dedup-repo"]
    (revision,) = experiment["revs"]
    assert revision["data"]["params"]["params.yaml"]["data"]["dedup"]["level"] == "repo"
    assert "dedup-repo" in _sh(["dvc", "exp", "show", "--csv"], root, env)


def test_rerun_from_scratch_is_byte_identical(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    _sh(["git", "checkout", "params.yaml"], root, env)
    _sh(["dvc", "repro", "validate"], root, env)
    before = _hashes(root)
    assert len(before) >= 4
    _sh(["dvc", "repro", "--force", "--no-run-cache", "validate"], root, env)
    assert _hashes(root) == before
