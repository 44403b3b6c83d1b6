"""No process outlives its stage: a SIGKILL of ``dvc repro pretrain``'s process group or of ``codemill run``
ends the DeepSpeed launcher and its ranks, the flow and Prefect's temporary API server; the MLflow runs
the killed processes left RUNNING are marked KILLED by the next run (checked with psutil and MLflow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.conftest import make_dvc_project, run_checked
from tests.test_train_deepspeed import _source

pytestmark = pytest.mark.slow

TRAINING = {
    "tokenize": {"vocab_size": 400, "val_fraction": 0.2},
    "model": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 64},
    "train": {"micro_batch": 2, "log_every": 1000, "eval_every": 100_000, "checkpoint_every": 100_000},
    "pretrain": {"steps": 100_000, "warmup": 1},  # runs until it is killed
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git+DVC copy of the project on a small local corpus, tokenized, with endless pretraining."""
    root = tmp_path_factory.mktemp("lifetime")
    for repo in range(6):
        for module in range(4):
            path = root / "corpus" / f"repo{repo}" / f"module{module}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_source(repo, module)[0])
    params = {"ingest": {"sources": [{"kind": "local", "paths": ["corpus"]}]}, **TRAINING}
    env = make_dvc_project(root, params=params)
    run_checked([sys.executable, "-m", "dvc", "repro", "tokenize"], root, env)
    return root, env


def _mine(root: Path) -> list[psutil.Process]:
    """Living processes working for this project (their command line or cwd names it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = process.info
        if process.pid == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(root) in " ".join(info["cmdline"] or []) or (info["cwd"] or "").startswith(str(root)):
            found.append(process)
    return found


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _ranks(root: Path) -> list[psutil.Process]:
    return [p for p in _mine(root) if "components.train.worker" in " ".join(p.info["cmdline"] or [])]


def _running(root: Path, stage: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("codemill")
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`codemill.stage` = '{stage}' and attributes.status = 'RUNNING'"
    )
    return [run.info.run_id for run in runs]


def test_sigkill_of_dvc_repro_ends_the_launcher_and_its_ranks(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    dvc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=root, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for(lambda: _ranks(root), 240, "the training ranks")
    os.killpg(dvc.pid, signal.SIGKILL)  # the whole `dvc repro` process group, the stage process included
    dvc.wait()
    _wait_for(lambda: not _mine(root), 30, "every process of the stage to end")
    assert len(_running(root, "pretrain")) == 1, "the killed stage's MLflow run is left RUNNING"


def test_the_next_run_of_a_stage_marks_its_killed_run_killed(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    (stale,) = _running(root, "pretrain")
    code = (
        "from components import tracking\n"
        "from components.params import load_params\n"
        "with tracking.stage_run('pretrain', load_params().context(), {}):\n"
        "    pass\n"
    )
    run_checked([sys.executable, "-c", code], root, env)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_run(stale).info.status == "KILLED"
    assert _running(root, "pretrain") == []


def test_sigkill_of_codemill_run_ends_the_flow_prefect_and_the_stage(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    run = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "run", "-s", "--force", "pretrain"], cwd=root, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for(lambda: _ranks(root), 300, "the training ranks under the flow")
    tree = psutil.Process(run.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree if p.is_running())
    assert "flows.pipeline" in names and "components.train.worker" in names
    run.send_signal(signal.SIGKILL)  # the command alone, not its group
    run.wait()
    left = lambda: [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
    _wait_for(lambda: not left(), 60, "every process it started (flow, Prefect's API, stage, ranks) to end")
    assert not _mine(root)
