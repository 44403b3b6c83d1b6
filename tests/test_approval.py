"""Promotion by approval on a REAL Prefect server: the approval flow run pauses with the candidate's
evaluation table; resumed through Prefect's API with an approval it moves ``champion``, with a rejection
it leaves it. The decision lands on the version's tags. Server and flow processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from components import services
from components.register import registry as reg
from components.train.launch import free_port
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

NAME = "codemill-approvaltest"


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("approval")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(root / ".prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = services.start_service("prefect-server", command, root, env)
    try:
        services.wait_until_answers(f"http://127.0.0.1:{port}/api/health", 120, server)
        yield env
    finally:
        assert services.stop_service(server) == []


@pytest.fixture(scope="module")
def candidates(prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """Three versions with eval tags; version 1 is the champion."""
    import mlflow

    reg.connect(prefect_env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    versions = []
    for score in (0.10, 0.20, 0.05):
        source = tmp_path_factory.mktemp("model")
        (source / "MLmodel").write_text("flavors: {}\n")
        version = client.create_model_version(NAME, str(source)).version
        client.set_model_version_tag(NAME, version, reg.metric_tag("humaneval.pass_at_1"), repr(score))
        client.set_model_version_tag(NAME, version, reg.TAG_GATES_PASSED, "true")
        versions.append(str(version))
    reg.promote(NAME, versions[0], "first", "test")
    return versions[0], versions[1], versions[2]


def paused_run(api: str, proc: subprocess.Popen[str], timeout_s: float = 120) -> dict:
    """The approval flow run once it is paused (fails early if its process ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).raise_for_status().json()
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("no approval flow run paused")


def decide(env: dict[str, str], version: str, run_input: dict[str, object]) -> dict:
    """Run the approval flow for ``version`` in its own process, resume it through the API with
    ``run_input`` and return what the flow returned."""
    kwargs = {
        "model_name": NAME,
        "version": version,
        "tracking_uri": env["MLFLOW_TRACKING_URI"],
        "timeout_s": 300,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.approval", json.dumps(kwargs)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = paused_run(env["PREFECT_API_URL"], proc)
        assert run["state"]["name"] == "Suspended" or run["state"]["type"] == "PAUSED"
        assert reg.alias_version(NAME, reg.CHAMPION) is not None
        # what the UI's "Resume" form sends: POST /flow_runs/{id}/resume with the reviewer's input
        resume = f"{env['PREFECT_API_URL']}/flow_runs/{run['id']}/resume"
        answer = httpx.post(resume, json={"run_input": run_input}, timeout=30)
        assert answer.raise_for_status().json()["status"] == "ACCEPT", answer.text
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, output
    result = json.loads(output.strip().splitlines()[-1])
    result["flow_run"] = run["id"]
    return result


def test_a_paused_promotion_moves_the_champion_only_when_approved(
    prefect_env: dict[str, str], candidates: tuple[str, str, str]
) -> None:
    first, better, worse = candidates
    table = reg.approval_table(NAME, better)
    assert f"candidate v{better}" in table and f"champion v{first}" in table and "0.2" in table

    rejected = decide(prefect_env, worse, {"approve": False, "reviewer": "bob", "reason": "lower pass@1"})
    assert rejected["approved"] is False and rejected["champion"] == first
    assert str(reg.alias_version(NAME, reg.CHAMPION).version) == first
    tags = reg.version_tags(NAME, worse)
    assert tags[reg.TAG_APPROVAL] == reg.REJECTED and tags[reg.TAG_APPROVAL_BY] == "bob"
    assert (
        tags[reg.TAG_APPROVAL_REASON] == "lower pass@1"
        and tags[reg.TAG_APPROVAL_FLOW_RUN] == rejected["flow_run"]
    )

    approved = decide(prefect_env, better, {"approve": True, "reviewer": "alice", "reason": "better pass@1"})
    assert approved["approved"] is True and approved["champion"] == better
    assert str(reg.alias_version(NAME, reg.CHAMPION).version) == better
    tags = reg.version_tags(NAME, better)
    assert tags[reg.TAG_APPROVAL] == reg.APPROVED and tags[reg.TAG_APPROVAL_BY] == "alice"
    assert tags[reg.TAG_BY] == "alice" and tags[reg.TAG_PREVIOUS] == first


def test_the_pipeline_asks_for_approval_only_for_a_pending_version(
    prefect_env: dict[str, str],
    candidates: tuple[str, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    from components.params import load_params
    from flows.pipeline import pending_approval

    monkeypatch.setenv("MLFLOW_TRACKING_URI", prefect_env["MLFLOW_TRACKING_URI"])

    client = mlflow.MlflowClient()
    version = client.create_model_version(NAME, str(tmp_path)).version
    client.set_model_version_tag(NAME, version, reg.TAG_APPROVAL, reg.PENDING)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "register.json").write_text(
        json.dumps({"details": {"model": NAME, "version": str(version)}})
    )
    defaults = str(PROJECT_ROOT / "params.yaml")
    params = load_params(defaults, overrides={"register.promotion.approval": "true"})
    assert pending_approval(tmp_path, params) == (NAME, str(version))
    assert pending_approval(tmp_path, load_params(defaults)) is None  # approval off: never asked
    client.set_model_version_tag(NAME, version, reg.TAG_APPROVAL, reg.REJECTED)  # decided: not asked again
    assert pending_approval(tmp_path, params) is None
