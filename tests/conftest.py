"""Shared fixtures: an isolated MLflow store per test, params built from the defaults, small corpora."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.params import Params, load_params, parse_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("CODEMILL_PARENT_RUN_ID", None)
if "PYTEST_XDIST_WORKER" in os.environ:
    # Tests run on two xdist workers (`make test`). Each gets its own Prefect home, or the workers'
    # temporary Prefect servers would share one SQLite database.
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(
        prefix=f"codemill-prefect-{os.environ['PYTEST_XDIST_WORKER']}-"
    )
    # Two workers share two cores: one OpenMP thread per process, or one worker's spinning threads slow
    # the other's training several times over (the DeepSpeed ranks honour it: train/engine.py).
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store migrated once per session (migrations take seconds; a copy takes ms)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, isolated MLflow tracking URI for one test (set as MLFLOW_TRACKING_URI)."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # The active experiment is process-global: a previous test may have left one from another store.
    mlflow.set_experiment("Default")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def make_params(**sections: Any) -> Params:
    """Default params with some sections replaced, e.g. ``make_params(dedup={"level": "exact"})``."""
    raw = load_params(PROJECT_ROOT / "params.yaml").model_dump(by_alias=True, mode="json")
    for name, value in sections.items():
        raw[name] = {**(raw.get(name) or {}), **value} if isinstance(value, dict) else value
    return parse_params(raw, source="test params")


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create ``files`` (relative path -> text or bytes) under ``root``; returns ``root``."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def project_files() -> list[str]:
    """The project's files a user's checkout has (tracked or not ignored), without tests, bench and docs."""
    import subprocess

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


def run_checked(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd``; fail the test with the end of its output if it fails. Returns stdout + stderr."""
    import subprocess

    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


def make_dvc_project(
    root: Path, params: dict[str, Any] | None = None, stages: list[str] | None = None
) -> dict[str, str]:
    """A git+DVC copy of the project in ``root``, committed; returns the environment to run it with.

    ``params`` sections replace those of params.yaml (``{"ingest": {...}}``, merged one level deep);
    ``stages`` keeps only those stages of dvc.yaml (with ``sources`` when it has ``ingest``).
    """
    import sys

    import yaml

    from components.validate.offline import ASSETS_PATH

    for relative in project_files():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, root / relative)
    assets = PROJECT_ROOT / ASSETS_PATH  # installed by `make setup`, ignored by git: linked, not copied
    if assets.is_dir():
        (root / ASSETS_PATH).symlink_to(assets, target_is_directory=True)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for name, value in (params or {}).items():
        raw[name] = {**(raw.get(name) or {}), **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if stages is not None:
        if "ingest" in stages and "sources" not in stages:
            stages = ["sources", *stages]  # ingest reads the sources' fingerprint
        dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
        dvc_yaml["stages"] = {name: dvc_yaml["stages"][name] for name in stages}
        (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
        lock_path = root / "dvc.lock"
        if lock_path.exists():  # the project's lock keeps only the stages that remain
            lock = yaml.safe_load(lock_path.read_text())
            lock["stages"] = {name: entry for name, entry in lock["stages"].items() if name in stages}
            lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))

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
        run_checked(cmd, root, env)
    return env


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 (``moto_server``) for one test module; yields its URL.

    Sets the standard AWS_* environment (endpoint, keys, region) that s3fs/boto3 read, and restores it
    after the module. Create buckets with ``boto3.client("s3").create_bucket(Bucket=...)``.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import s3fs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"moto_server exited with {server.returncode}"
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, f"moto_server did not answer on {url} within 60 s"
                time.sleep(0.2)
        environment = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            s3fs.S3FileSystem.clear_instance_cache()  # cached instances may hold another endpoint
            yield url
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until ``url`` answers 200 (fail early if ``proc`` died)."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process for {url} exited with {proc.returncode}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s}s")


@contextlib.contextmanager
def running_mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (sqlite + proxied artifacts under ``root``) with an experiment
    ``codemill``; MLFLOW_TRACKING_URI points at it while the block runs. Stopped by PID after it."""
    import sys

    import mlflow

    from components.processes import kill_group
    from components.train.launch import free_port

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    command += [
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout_s=120)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", url)
            mlflow.set_tracking_uri(url)
            mlflow.MlflowClient().create_experiment("codemill")  # server default: mlflow-artifacts:/
            yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        kill_group(proc.pid)  # whatever the server left behind


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server for one test module (:func:`running_mlflow_server`); its URL."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
