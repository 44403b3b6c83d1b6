"""Local services for scheduled runs: ``codemill up`` starts them, ``codemill down`` stops exactly them.

``up`` starts on 127.0.0.1 a Prefect server, an MLflow tracking server on the project's ``mlflow.db``
(the store stages write to), and a Prefect worker for the process work pool ``codemill``; it records
their PIDs (with start times, so a recycled PID is never signalled) in ``.codemill/services.json``,
deploys ``prefect.yaml`` and prints both UI addresses. Each service runs in its own session and logs to
``.codemill/logs/<service>.log``. ``down`` stops each recorded process with its process group and
descendants (flow runs a worker started included): SIGINT twice (a Prefect worker needs the second),
then SIGTERM, then SIGKILL, and checks that none is left.

Safety: ``up`` and ``down`` hold an exclusive lock (``.codemill/services.lock``), so two ``up`` started at
the same moment cannot both start servers. A process is signalled only when it is provably ours: the
recorded PID with the recorded start time and boot, its descendants, and the members of its process
group; a stale record (after a reboot, or a recycled PID) signals nothing. ``services.json`` is written
atomically; a corrupt one is reported, not crashed on.

Prefect's state lives in ``$PREFECT_HOME`` (default here: ``.codemill/prefect``, next to the project).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from components.params import load_params
from components.processes import ProcessRecord, tool_env

STATE_DIR = Path(".codemill")
SERVICES_FILE = STATE_DIR / "services.json"
LOCK_FILE = STATE_DIR / "services.lock"
WORK_POOL = "codemill"
HOST = "127.0.0.1"
#: (signal, seconds to wait for the processes to go) in order; a Prefect worker needs a second SIGINT.
STOP_SEQUENCE = ((signal.SIGINT, 10.0), (signal.SIGINT, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


class ServiceError(RuntimeError):
    """A service could not be started, did not answer, or could not be stopped."""


def _bin(name: str) -> str:
    """An executable of this interpreter's environment (``prefect``, ``mlflow``, ``dvc``)."""
    return str(Path(sys.executable).parent / name)


def service_env(root: Path, prefect_port: int) -> dict[str, str]:
    """Environment of every service and Prefect CLI call: quiet, this venv first, the local Prefect API."""
    env = tool_env({"PREFECT_API_URL": f"http://{HOST}:{prefect_port}/api"})
    env.setdefault("PREFECT_HOME", str(root / STATE_DIR / "prefect"))
    return env


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``HOST:port``."""
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) != 0


def answers(url: str) -> bool:
    """Whether ``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answers(url: str, timeout_s: float, record: dict[str, Any] | None = None) -> None:
    """Poll ``url`` until it answers 200; raise ``ServiceError`` (with the service's log tail) if it
    does not within ``timeout_s`` or the service's process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answers(url):
            return
        if record is not None and not is_running(record):
            break
        time.sleep(0.5)
    log = "".join(Path(record["log"]).read_text(errors="replace").splitlines(True)[-20:]) if record else ""
    raise ServiceError(f"{url} did not answer within {timeout_s:.0f}s\n{log}")


def start_service(name: str, cmd: list[str], root: Path, env: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Start ``cmd`` in its own session with output to ``.codemill/logs/<name>.log``; returns its record."""
    log = root / STATE_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return {
        "name": name,
        "pid": process.pid,
        "create_time": psutil.Process(process.pid).create_time(),
        "boot_time": psutil.boot_time(),
        "cmd": cmd,
        "log": str(log),
        **extra,
    }


def _same_boot(record: dict[str, Any]) -> bool:
    return abs(float(record.get("boot_time", 0)) - psutil.boot_time()) < 1.0


def is_running(record: dict[str, Any]) -> bool:
    """Whether the recorded process is still the one we started (same PID, start time and boot) and alive."""
    return _same_boot(record) and ProcessRecord.from_dict(record).alive()


def _tree(record: dict[str, Any]) -> list[psutil.Process]:
    """The processes of a service that are provably ours: the recorded process (same PID, start time and
    boot), its descendants and its process group; if the process is gone, what is left of its group
    (a PGID in use is never handed out as a new PID). Nothing for a stale record."""
    if not _same_boot(record):
        return []
    found: dict[int, psutil.Process] = {}
    process = ProcessRecord.from_dict(record).process()
    if process is not None:
        for member in [process, *process.children(recursive=True)]:
            found[member.pid] = member
    elif psutil.pid_exists(record["pid"]):
        return []  # the PID now belongs to another process: neither it nor its group is ours
    for candidate in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(candidate.pid) == record["pid"]:
                found[candidate.pid] = candidate
    return list(found.values())


def stop_service(record: dict[str, Any]) -> list[int]:
    """Stop a recorded service with its group and descendants (``STOP_SEQUENCE``); returns survivors' PIDs.

    Each process is signalled on its own, after :func:`_tree` proved it ours (never a bare ``killpg``).
    """
    tracked = {p.pid: p for p in _tree(record)}
    for sig, wait_s in STOP_SEQUENCE:
        tracked.update({p.pid: p for p in _tree(record)})
        alive = [p for p in tracked.values() if _alive(p)]
        if not alive:
            return []
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        psutil.wait_procs(alive, timeout=wait_s)
    return [p.pid for p in tracked.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_services(root: Path) -> list[dict[str, Any]]:
    """The services recorded by ``up`` (empty if none); a ServiceError names a corrupt file."""
    path = root / SERVICES_FILE
    if not path.exists():
        return []
    try:
        services = json.loads(path.read_text())["services"]
        for record in services:
            ProcessRecord.from_dict(record)
            if not isinstance(record.get("name"), str):
                raise ValueError(f"a record without a name: {record!r}")
        return services
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(
            f"{path} is corrupt ({exc}); check that no service of this project runs, then delete it"
        ) from None


def _write_services(root: Path, services: list[dict[str, Any]]) -> None:
    """Write the records atomically (temporary file + rename)."""
    path = root / SERVICES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"services": services}, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def services_lock(root: Path) -> Iterator[None]:
    """Hold the project's exclusive services lock; a ServiceError when another ``up``/``down`` holds it."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceError(f"another `codemill up` or `codemill down` is running ({path})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prefect_cli(args: list[str], root: Path, env: dict[str, str], timeout_s: float = 180) -> str:
    """Run `prefect --no-prompt ARGS` (an "already exists" error counts as success); returns its output."""
    result = subprocess.run(
        [_bin("prefect"), "--no-prompt", *args], cwd=root, env=env, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if result.returncode != 0 and "already exists" not in output:
        raise ServiceError(f"`prefect {' '.join(args)}` failed:\n{output[-3000:]}")
    return output


def _worker_online(prefect_url: str, name: str) -> bool:
    """Whether the worker called ``name`` has reported to the server."""
    request = urllib.request.Request(
        f"{prefect_url}/api/work_pools/{WORK_POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return any(w["name"] == name and w.get("status") == "ONLINE" for w in json.load(response))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(
    root: str | Path = ".",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    deploy: bool = True,
    timeout_s: float = 120.0,
    artifacts_destination: str | None = None,
) -> dict[str, str]:
    """Start the services and deploy ``prefect.yaml``; returns the UI addresses. On error, stops them.

    MLflow stores artifacts in ``artifacts_destination`` (e.g. ``s3://bucket/mlflow``, endpoint and keys
    from the ``AWS_*`` / ``MLFLOW_S3_ENDPOINT_URL`` environment), default ``tracking.artifact_location``.
    Holds the services lock throughout: a second ``up`` at the same moment fails at once.
    """
    root = Path(root).resolve()
    with services_lock(root):
        return _start_all(root, prefect_port, mlflow_port, deploy, timeout_s, artifacts_destination)


def _start_all(
    root: Path,
    prefect_port: int,
    mlflow_port: int,
    deploy: bool,
    timeout_s: float,
    artifacts_destination: str | None,
) -> dict[str, str]:
    """The body of :func:`up`, under the lock."""
    if any(is_running(record) for record in read_services(root)):
        raise ServiceError(f"services are already up (see {SERVICES_FILE}); run `codemill down` first")
    for port in (prefect_port, mlflow_port):
        if not port_is_free(port):
            raise ServiceError(f"port {HOST}:{port} is in use; choose another (--prefect-port/--mlflow-port)")
    env = service_env(root, prefect_port)
    params = load_params(root / "params.yaml")
    prefect_url, mlflow_url = f"http://{HOST}:{prefect_port}", f"http://{HOST}:{mlflow_port}"
    store = params.tracking.uri  # the project's store, whatever MLFLOW_TRACKING_URI says in this shell
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        store = f"sqlite:///{root / store.removeprefix('sqlite:///')}"
    artifacts = artifacts_destination or params.tracking.artifact_location
    artifacts = artifacts if "://" in artifacts else str(root / artifacts)
    services: list[dict[str, Any]] = []
    try:
        services.append(
            start_service(
                "prefect-server",
                [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
                root, env, url=prefect_url, health=f"{prefect_url}/api/health",
            )
        )  # fmt: skip
        _write_services(root, services)
        services.append(
            start_service(
                "mlflow-server",
                [_bin("mlflow"), "server", "--backend-store-uri", store, "--artifacts-destination", artifacts,
                 "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
                root, {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job runners
                url=mlflow_url, health=f"{mlflow_url}/health",
            )
        )  # fmt: skip
        _write_services(root, services)
        for record in services:
            wait_until_answers(record["health"], timeout_s, record)
        prefect_cli(["work-pool", "create", WORK_POOL, "--type", "process"], root, env)
        worker = f"{WORK_POOL}-{uuid.uuid4().hex[:8]}"
        services.append(
            start_service(
                "prefect-worker",
                [_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
                 "--name", worker],
                root, env,
            )
        )  # fmt: skip
        _write_services(root, services)
        deadline = time.monotonic() + timeout_s
        while not _worker_online(prefect_url, worker):
            if time.monotonic() > deadline or not is_running(services[-1]):
                raise ServiceError(f"the worker did not come online; see {services[-1]['log']}")
            time.sleep(0.5)
        if deploy:
            prefect_cli(["deploy", "--all"], root, env)
    except BaseException:
        for record in reversed(services):
            stop_service(record)
        (root / SERVICES_FILE).unlink(missing_ok=True)
        raise
    return {"prefect": prefect_url, "mlflow": mlflow_url}


def down(root: str | Path = ".") -> list[str]:
    """Stop the recorded services (last started first); returns what could not be stopped (normally [])."""
    root = Path(root).resolve()
    problems = []
    with services_lock(root):
        for record in reversed(read_services(root)):
            survivors = stop_service(record)
            if survivors:
                problems.append(f"{record['name']}: processes {survivors} survived SIGKILL")
        if not problems:
            (root / SERVICES_FILE).unlink(missing_ok=True)
    return problems
