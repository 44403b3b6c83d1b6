"""`codemill up` / `codemill down`: real servers and worker on 127.0.0.1, and nothing left afterwards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import PROJECT_ROOT, project_files

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _codemill(args: list[str], root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_answers_and_deploys_then_down_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "project"
    for relative in project_files():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, root / relative)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    prefect_port, mlflow_port = _free_port(), _free_port()
    ports = ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]

    started = _codemill(["up", *ports], root, env)
    recorded = root / ".codemill/services.json"
    records = json.loads(recorded.read_text())["services"] if recorded.exists() else []
    tree: list[psutil.Process] = []
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        prefect, mlflow = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
        assert prefect in started.stdout and mlflow in started.stdout
        assert [record["name"] for record in records] == ["prefect-server", "mlflow-server", "prefect-worker"]
        assert httpx.get(f"{prefect}/api/health", timeout=10).json() is True
        assert httpx.get(f"{mlflow}/health", timeout=10).text == "OK"
        # the MLflow server reads the project's store (the one stages write to)
        assert "--backend-store-uri" in records[1]["cmd"]
        assert records[1]["cmd"][records[1]["cmd"].index("--backend-store-uri") + 1].endswith("/mlflow.db")

        deployments = httpx.post(f"{prefect}/api/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in deployments}
        assert set(by_name) == {"nightly", "ablation"}
        assert all(d["work_pool_name"] == "codemill" for d in deployments)
        (schedule,) = by_name["nightly"]["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *"
        workers = httpx.post(f"{prefect}/api/work_pools/codemill/workers/filter", json={}, timeout=30).json()
        assert [w["status"] for w in workers] == ["ONLINE"]

        processes = [psutil.Process(record["pid"]) for record in records]
        tree = processes + [child for p in processes for child in p.children(recursive=True)]
        assert len(tree) >= 3
        again = _codemill(["up", *ports], root, env)
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        stopped = _codemill(["down"], root, env)
    assert stopped.returncode == 0, stopped.stderr
    assert "prefect-server" in stopped.stdout
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []
    for port in (prefect_port, mlflow_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    assert not (root / ".codemill/services.json").exists()


def test_two_ups_at_once_cannot_both_start(tmp_path: Path) -> None:
    from components import services

    with (
        services.services_lock(tmp_path),
        pytest.raises(services.ServiceError, match="another `codemill up`"),
    ):
        services.up(tmp_path, _free_port(), _free_port(), deploy=False)
    assert not (tmp_path / services.SERVICES_FILE).exists()


def test_down_never_signals_a_process_that_is_not_the_recorded_one(tmp_path: Path) -> None:
    from components import services

    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        started = psutil.Process(bystander.pid).create_time()
        stale = [
            # the same PID, another start time: a recycled PID (or a record from before a reboot)
            {
                "name": "recycled",
                "pid": bystander.pid,
                "create_time": started - 1000,
                "boot_time": psutil.boot_time(),
            },
            # the right process, but recorded in another boot
            {"name": "old-boot", "pid": bystander.pid, "create_time": started, "boot_time": 1.0},
        ]
        services._write_services(tmp_path, stale)
        assert services.down(tmp_path) == []
        assert bystander.poll() is None, "an unrelated process (and its group) was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_corrupt_services_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    (tmp_path / ".codemill").mkdir()
    (tmp_path / ".codemill" / "services.json").write_text('{"services": [{"name": "x", "pid": "abc"')
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = _codemill(["down"], tmp_path, env)
    assert result.returncode == 1 and "services.json is corrupt" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
