"""Launch a training stage's ranks with the ``deepspeed`` launcher, from the stage process.

The stage process (what ``dvc.yaml`` runs, inside its MLflow stage run) writes the resolved params to
a file under ``.codemill/launch/`` (removed afterwards) and runs::

    deepspeed --num_gpus N [--num_nodes M --hostfile H] --master_port P --module --no_local_rank \\
        components.train.worker --stage <stage> --params-json ... --input ... --output ...

in its own process group (a cancelled or failed stage takes all ranks with it), forwarding the exit
status. Rank 0 logs into the same MLflow run (``MLFLOW_RUN_ID``; the launcher exports ``MLFLOW_*`` to
other nodes). Multi-node runs need the project directory (checkpoints, output) on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from components.config import Params, flatten
from components.errors import StageError
from components.report import StageReport
from components.stage import StageIO
from components.train.engine import STOPPED_EXIT_CODE

LAUNCH_DIR = Path(".codemill") / "launch"


def free_port() -> int:
    """An unused TCP port on this machine (for the rendezvous when ``train.master_port`` is null)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(params: Params, stage: str, params_json: str, io: StageIO) -> list[str]:
    """The ``deepspeed`` launcher command line that runs ``stage``'s ranks."""
    train = params.train
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(train.num_gpus)]
    if train.num_nodes > 1 or train.hostfile:
        cmd += ["--num_nodes", str(train.num_nodes)]
    if train.hostfile:
        cmd += ["--hostfile", train.hostfile]
    cmd += ["--master_port", str(train.master_port or free_port()), "--module", "--no_local_rank"]
    cmd += ["components.train.worker", "--stage", stage, "--params-json", params_json]
    for path in io.inputs:
        cmd += ["--input", path]
    return [*cmd, "--output", str(io.output)]


def run_process_group(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in a new process group and return its exit code.

    If this process is interrupted or terminated (SIGINT/SIGTERM) the whole group is terminated, so no
    rank outlives the stage.
    """
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum: int, _frame: Any) -> None:
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return process.wait()
    except BaseException:
        _kill_group(process)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def worker_env() -> dict[str, str]:
    """The ranks' environment: ours plus the MLflow run to log into and, without CUDA, the CPU accelerator."""
    import mlflow
    import torch

    env = dict(os.environ)
    run = mlflow.active_run()
    if run is not None:
        env["MLFLOW_RUN_ID"] = run.info.run_id
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def launch(stage: str, params: Params, io: StageIO) -> dict[str, Any]:
    """Train ``stage`` on all ranks; returns its ``training.json`` summary. Raises StageError on failure."""
    import mlflow

    if not io.output:
        raise StageError(f"{stage}: --output (the exported model directory) is required")
    dumped = params.model_dump(by_alias=True, mode="json")
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten({"model": dumped["model"], "train": dumped["train"]}))
    LAUNCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=LAUNCH_DIR, prefix=f"{stage}-", suffix=".json") as params_json:
        json.dump(dumped, params_json, indent=2)
        params_json.flush()
        code = run_process_group(launcher_command(params, stage, params_json.name, io), worker_env())
    if code == STOPPED_EXIT_CODE:
        raise StageError(
            f"{stage}: training stopped on request; rerun the stage to resume from its checkpoint"
        )
    if code != 0:
        raise StageError(f"{stage}: training failed (launcher exit code {code}); see the rank logs above")
    return json.loads((Path(io.output) / "training.json").read_text())


def training_report(stage: str, summary: dict[str, Any], index: dict[str, Any], output: str) -> StageReport:
    """The stage report of a training stage: training split in, exported model files out, final metrics."""
    train_split = index["splits"]["train"]
    files = sorted(path for path in Path(output).iterdir() if path.is_file())
    report = StageReport(
        stage=stage,
        files_in=train_split["documents"],
        files_out=len(files),
        bytes_in=train_split["bytes"],
        bytes_out=sum(path.stat().st_size for path in files),
    )
    report.metrics = {
        "tokens_trained": summary["tokens_trained"],
        "final_val_loss": summary["val_loss"],
        "final_val_bpb": summary["val_bpb"],
        "mean_tokens_per_s": summary["tokens_per_s"],
        "params": summary["params"],
    }
    if summary.get("mfu") is not None:
        report.metrics["mean_mfu"] = summary["mfu"]
    report.details = {key: value for key, value in summary.items() if key not in ("curve", "val_curve")}
    return report
