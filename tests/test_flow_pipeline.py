"""The pipeline flow: DAG from DVC, guarded stage processes, and real deployment runs on a Prefect server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import mlflow
import psutil
import pytest
import yaml

from components import services
from components.cli import main
from components.dvc_project import read_dag, select
from components.processes import CommandFailed, run_guarded
from flows.pipeline import DvcProgress
from tests.conftest import PROJECT_ROOT, make_dvc_project

STAGES = ["ingest", "curate", "dedup"]


def _sleeping(prefix: str) -> list[psutil.Process]:
    """Live ``sleep N`` processes whose N starts with ``prefix`` (each test sleeps for its own N)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        is_sleep = len(cmdline) == 2 and Path(cmdline[0]).name == "sleep" and cmdline[1].startswith(prefix)
        if is_sleep and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ without Prefect
def test_dag_comes_from_dvc_with_templating_and_targets(tmp_path: Path) -> None:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    (tmp_path / "params.yaml").write_text("pick: b\n")
    stages = {
        "a": {"cmd": "echo a > a", "outs": ["a"]},
        "b": {"cmd": "cat a > b", "deps": ["a"], "outs": ["b"]},
        "c": {"cmd": "cat a > c", "deps": ["a"], "outs": ["c"], "metrics": [{"c.json": {"cache": False}}]},
        "d": {"cmd": "cat ${pick} c > d", "deps": ["${pick}", "c"], "outs": ["d"]},
        "lone": {"cmd": "echo x > x", "outs": ["x"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))

    dag = read_dag(tmp_path)
    order = [stage.address for stage in dag]
    assert sorted(order) == ["a", "b", "c", "d", "lone"]
    assert order.index("a") < order.index("b") < order.index("d") and order.index("c") < order.index("d")
    by_name = {stage.address: stage for stage in dag}
    assert by_name["d"].upstream == ("b", "c")  # ${pick} resolved to b by DVC
    assert by_name["c"].outs == ("c",) and by_name["c"].metrics == ("c.json",)
    assert [stage.address for stage in select(dag, ["d"])] == [a for a in order if a != "lone"]
    with pytest.raises(ValueError, match="unknown stage"):
        select(dag, ["nope"])


def test_failed_command_reports_its_last_lines_and_leaves_no_process() -> None:
    script = "setsid sleep 3171 & sleep 3172 & for i in $(seq 50); do echo line $i; done; exit 3"
    with pytest.raises(CommandFailed) as failure:
        run_guarded(["sh", "-c", script], tail_lines=30)
    assert failure.value.returncode == 3
    assert failure.value.tail[0].strip() == "line 21" and "line 50" in str(failure.value)
    assert _sleeping("317") == []


def test_sigkill_of_the_launcher_ends_the_whole_stage_tree(tmp_path: Path) -> None:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            f"""
            import sys, threading
            sys.path.insert(0, {str(PROJECT_ROOT)!r})
            from components.processes import run_guarded
            cmd = ["sh", "-c", "sleep 3181 & setsid sleep 3182 & sleep 3183"]
            thread = threading.Thread(target=run_guarded, args=(cmd,))  # as a Prefect task thread does
            thread.start()
            thread.join()
            """
        )
    )
    process = subprocess.Popen([sys.executable, str(launcher)])
    try:
        _wait_for(lambda: len(_sleeping("318")) == 3, 20, "the stage processes")
        process.send_signal(signal.SIGKILL)
        process.wait()
        _wait_for(lambda: not _sleeping("318"), 15, "the stage processes to end")
    finally:
        process.kill()


def test_dvc_output_tells_which_stages_ran_or_were_skipped() -> None:
    logged: list[str] = []
    progress = DvcProgress(SimpleNamespace(info=logged.append))
    assert progress.seconds(ended=1.0) == {}  # nothing ran (every stage cached)
    for line in [
        "Reproducing experiment 'quiet-fox'",
        "Stage 'ingest' didn't change, skipping",
        "Stage 'curate' is cached - skipping run, checking out outputs",
        "Running stage 'dedup':",
        "> python -m components.dedup --input data/curate --output data/dedup",
        "Running stage 'sub/dvc.yaml:clean':",
    ]:
        progress(line)
    assert len(logged) == 6 and progress.experiment == "quiet-fox"
    assert progress.skipped == {"ingest", "curate"} and progress.ran() == {"dedup", "sub/dvc.yaml:clean"}
    seconds = progress.seconds(ended=progress.started[-1][0] + 2.0)
    assert set(seconds) == {"dedup", "sub/dvc.yaml:clean"} and seconds["sub/dvc.yaml:clean"] == 2.0


def test_dry_run_shows_the_experiment_for_set_and_rejects_bad_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    assert main(["run", "--dry-run", "--set", "dedup.level=exact", "--name", "x", "dedup"]) == 0
    assert capsys.readouterr().out.strip() == "dvc exp run --name x --set-param dedup.level=exact dedup"
    assert main(["run", "--dry-run", "--set", "dedup.level=bogus"]) == 2
    assert "dedup.level" in capsys.readouterr().err
    assert main(["run", "--dry-run", "--set", "dedup"]) == 2


# ------------------------------------------------------------------------ deployments on a real server
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git+DVC copy of the project with three data stages on a tiny corpus, and its environment."""
    root = tmp_path_factory.mktemp("flowproject")
    tiny = {"sources": [{"kind": "python-stdlib"}], "max_files": 40}  # not the system source: read whole
    env = make_dvc_project(root, params={"ingest": tiny}, stages=STAGES)
    env = {key: value for key, value in env.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(root / ".prefect-home"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return root, env


@pytest.fixture(scope="module")
def prefect_api(project: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """A Prefect server (free port) and a process worker, started and stopped by PID; pipeline deployed."""
    root, base_env = project
    port = _free_port()
    env = {**base_env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    prefect = str(Path(sys.executable).parent / "prefect")
    server = services.start_service(
        "prefect-server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], root, env
    )
    started = [server]
    try:
        services.wait_until_answers(f"http://127.0.0.1:{port}/api/health", 120, server)
        services.prefect_cli(["work-pool", "create", services.WORK_POOL, "--type", "process"], root, env)
        services.prefect_cli(["deploy", "--name", "nightly"], root, env)
        worker = [prefect, "worker", "start", "--pool", services.WORK_POOL, "--type", "process"]
        started.append(services.start_service("prefect-worker", worker, root, env))
        yield env["PREFECT_API_URL"]
    finally:
        pids = [record["pid"] for record in started]
        survivors = [pid for record in reversed(started) for pid in services.stop_service(record)]
        assert survivors == [], f"processes {survivors} of {pids} survived"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One Prefect REST call; retried on 503, which the server answers while its SQLite store is busy."""
    for attempt in range(20):
        response = httpx.request(method, f"{api}{path}", json=body, timeout=30)
        if response.status_code != 503:
            return response.raise_for_status().json()
        time.sleep(0.5 * (attempt + 1))
    response.raise_for_status()


def _trigger(api: str, parameters: dict[str, Any] | None = None) -> str:
    """Create a flow run of deployment pipeline/nightly through the API; returns its id."""
    deployment = _api(api, "GET", "/deployments/name/pipeline/nightly")
    body = {"parameters": parameters or {}}
    return _api(api, "POST", f"/deployments/{deployment['id']}/create_flow_run", body)["id"]


def _final_state(api: str, flow_run_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _api(api, "GET", f"/flow_runs/{flow_run_id}")["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout_s}s")


def _stage_table(api: str, flow_run_id: str) -> dict[str, dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["pipeline-stages"]}}}
    (artifact,) = _api(api, "POST", "/artifacts/filter", body)
    return {row["stage"]: row for row in json.loads(artifact["data"])}


def _mlflow(root: Path) -> tuple[mlflow.MlflowClient, str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("codemill").experiment_id


def _parent_and_children(root: Path, flow_run_id: str) -> tuple[Any, dict[str, Any]]:
    client, experiment_id = _mlflow(root)
    (parent,) = client.search_runs([experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, {run.data.tags["codemill.stage"]: run for run in children}


@pytest.mark.slow
def test_deployment_run_completes_with_stage_runs_nested_under_one_parent(
    project: tuple[Path, dict[str, str]], prefect_api: str
) -> None:
    root, _ = project
    flow_run_id = _trigger(prefect_api)
    state = _final_state(prefect_api, flow_run_id)
    assert state["type"] == "COMPLETED", state["message"]

    table = _stage_table(prefect_api, flow_run_id)
    assert [table[s]["status"] for s in STAGES] == ["ran"] * 3
    assert table["dedup"]["files_in"] == table["curate"]["files_out"] > 0
    parent, children = _parent_and_children(root, flow_run_id)
    assert parent.data.tags["codemill.kind"] == "pipeline" and parent.info.status == "FINISHED"
    assert set(children) == {"sources", *STAGES}  # the sources fingerprint runs first
    assert {s: table[s]["mlflow_run"] for s in STAGES} == {s: children[s].info.run_id for s in STAGES}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert children["dedup"].data.tags["dvc.md5.data/dedup"] == lock["stages"]["dedup"]["outs"][0]["md5"]


@pytest.mark.slow
def test_second_run_shows_unchanged_stages_cached_and_linked_to_their_runs(
    project: tuple[Path, dict[str, str]], prefect_api: str
) -> None:
    root, _ = project
    client, experiment_id = _mlflow(root)
    producers = {
        stage: client.search_runs([experiment_id], f"tags.`codemill.stage` = '{stage}'")[0].info.run_id
        for stage in STAGES
    }
    flow_run_id = _trigger(prefect_api)
    state = _final_state(prefect_api, flow_run_id)
    assert state["type"] == "COMPLETED", state["message"]

    table = _stage_table(prefect_api, flow_run_id)
    assert {s: (table[s]["status"], table[s]["cached"]) for s in STAGES} == {
        s: ("cached", True) for s in STAGES
    }
    assert {s: table[s]["mlflow_run"] for s in STAGES} == producers  # the runs that produced the outputs
    parent, children = _parent_and_children(root, flow_run_id)
    assert set(children) == {"sources"} and table["sources"]["status"] == "ran"  # only the fingerprint ran
    assert parent.data.tags["codemill.status.dedup"] == "cached"
    assert parent.data.tags["codemill.run.dedup"] == producers["dedup"]


@pytest.mark.slow
def test_failing_stage_fails_the_flow_run_with_its_error_and_leaves_no_process(
    project: tuple[Path, dict[str, str]], prefect_api: str
) -> None:
    root, _ = project
    original = (root / "dvc.yaml").read_text()
    failing = (
        "import subprocess, sys; subprocess.Popen(['sleep', '3191'], start_new_session=True); "
        "print('explode: planted failure in the stage'); sys.exit(3)"
    )
    dvc_yaml = yaml.safe_load(original)
    dvc_yaml["stages"]["explode"] = {
        "cmd": f'python -c "{failing}"',
        "deps": ["data/curate"],
        "outs": ["boom"],
    }
    dvc_yaml["stages"]["after"] = {"cmd": "touch after", "deps": ["boom"], "outs": ["after"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    try:
        flow_run_id = _trigger(prefect_api)
        state = _final_state(prefect_api, flow_run_id)
    finally:
        (root / "dvc.yaml").write_text(original)

    assert state["type"] == "FAILED"
    assert "stage 'explode' failed" in state["message"]
    assert "explode: planted failure in the stage" in state["message"]
    assert _sleeping("3191") == []  # the stage's setsid() child went with it
    table = _stage_table(prefect_api, flow_run_id)
    assert [table[s]["status"] for s in [*STAGES, "explode", "after"]] == ["cached"] * 3 + [
        "failed",
        "not run",
    ]


@pytest.mark.slow
def test_a_failed_stage_is_retried(project: tuple[Path, dict[str, str]], prefect_api: str) -> None:
    root, _ = project
    original = (root / "dvc.yaml").read_text()
    dvc_yaml = yaml.safe_load(original)
    flaky = "test -e tried || { touch tried; echo 'flaky: first attempt fails'; exit 1; }; touch flaky"
    dvc_yaml["stages"]["flaky"] = {"cmd": flaky, "outs": ["flaky"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    parameters = {"targets": ["flaky"], "single_item": True, "retries": 1, "retry_delay_seconds": 0}
    try:
        flow_run_id = _trigger(prefect_api, parameters)
        state = _final_state(prefect_api, flow_run_id)
    finally:
        (root / "dvc.yaml").write_text(original)
    assert state["type"] == "COMPLETED", state["message"]
    assert list(_stage_table(prefect_api, flow_run_id)) == ["flaky"]  # single_item: not its upstream
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    (task_run,) = _api(prefect_api, "POST", "/task_runs/filter", body)
    assert task_run["name"] == "flaky" and task_run["run_count"] == 2


@pytest.mark.slow
def test_cancelling_the_flow_run_ends_the_running_stage(
    project: tuple[Path, dict[str, str]], prefect_api: str
) -> None:
    root, _ = project
    original = (root / "dvc.yaml").read_text()
    dvc_yaml = yaml.safe_load(original)
    dvc_yaml["stages"]["slow"] = {"cmd": "sleep 3201 && touch slow", "deps": ["data/dedup"], "outs": ["slow"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    try:
        flow_run_id = _trigger(prefect_api, {"targets": ["slow"]})
        _wait_for(lambda: _sleeping("3201"), 120, "the slow stage to start")
        body = {"state": {"type": "CANCELLING"}, "force": True}
        _api(prefect_api, "POST", f"/flow_runs/{flow_run_id}/set_state", body)
        state = _final_state(prefect_api, flow_run_id, timeout_s=90)
    finally:
        (root / "dvc.yaml").write_text(original)
    assert state["type"] == "CANCELLED"
    _wait_for(lambda: not _sleeping("3201"), 30, "the stage process to end")
    parent, _ = _parent_and_children(root, flow_run_id)
    assert parent.info.status == "KILLED"  # the flow itself ended the stage and closed its parent run


@pytest.mark.slow
def test_overrides_run_as_a_dvc_experiment(project: tuple[Path, dict[str, str]], prefect_api: str) -> None:
    root, env = project
    overrides = {"dedup.level": "exact"}
    flow_run_id = _trigger(prefect_api, {"overrides": overrides, "experiment": "flow-exact"})
    state = _final_state(prefect_api, flow_run_id)
    assert state["type"] == "COMPLETED", state["message"]

    table = _stage_table(prefect_api, flow_run_id)
    assert [table[s]["status"] for s in STAGES] == ["cached", "cached", "ran"]
    assert table["dedup"]["experiment"] == "flow-exact"
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    experiments = {exp.get("name"): exp for row in json.loads(shown) for exp in row.get("experiments") or []}
    (revision,) = experiments["flow-exact"]["revs"]
    assert revision["data"]["params"]["params.yaml"]["data"]["dedup"]["level"] == "exact"
    parent, children = _parent_and_children(root, flow_run_id)
    assert parent.data.tags["dvc.exp_name"] == "flow-exact"
    assert (
        set(children) == {"sources", "dedup"} and children["dedup"].data.tags["dvc.exp_name"] == "flow-exact"
    )
    assert children["dedup"].data.params["dedup.level"] == "exact"
