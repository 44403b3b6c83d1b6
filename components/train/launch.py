"""Launch a training stage's ranks with the ``deepspeed`` launcher, from the stage process.

The stage process (what ``dvc.yaml`` runs, inside its MLflow stage run) writes the stage's job and the
shared context to a file under ``.codemill/launch/`` (removed afterwards) and runs::

    deepspeed --num_gpus N [--num_nodes M --hostfile H] --master_port P --module --no_local_rank \\
        components.train.worker --stage <stage> --job-json ... --input ... --output ...

under a guard (``components/processes.py``): a cancelled, failed or killed stage takes all ranks with
it. Rank 0 logs into the same MLflow run (``MLFLOW_RUN_ID``; the launcher exports ``MLFLOW_*`` to other
nodes) and leaves the run's full summary in the checkpoint directory. Multi-node runs need the project
directory (checkpoints, output) on a shared filesystem.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from components.errors import StageError
from components.params import StageContext, TrainingJob
from components.processes import CommandFailed, run_guarded, tool_env
from components.stage_runner import StageIO
from components.train.engine import STOPPED_EXIT_CODE
from components.train.plan import run_summary_path

LAUNCH_DIR = Path(".codemill") / "launch"


def free_port() -> int:
    """An unused TCP port on this machine (for the rendezvous when ``train.master_port`` is null)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(job: TrainingJob, job_json: str, io: StageIO) -> list[str]:
    """The ``deepspeed`` launcher command line that runs the job's ranks."""
    train = job.train
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(train.num_gpus)]
    if train.num_nodes > 1 or train.hostfile:
        cmd += ["--num_nodes", str(train.num_nodes)]
    if train.hostfile:
        cmd += ["--hostfile", train.hostfile]
    cmd += ["--master_port", str(train.master_port or free_port()), "--module", "--no_local_rank"]
    cmd += ["components.train.worker", "--stage", job.stage, "--job-json", job_json]
    for path in io.inputs.values():
        cmd += ["--input", path]
    return [*cmd, "--output", str(io.output)]


def worker_env() -> dict[str, str]:
    """The ranks' environment: ours plus the MLflow run to log into and, without CUDA, the CPU accelerator."""
    import torch

    from components import tracking

    env = tool_env(tracking.active_run_env())
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def job_payload(job: TrainingJob, context: StageContext) -> dict[str, Any]:
    """What the ranks read from ``--job-json``: the job and the shared context."""
    return {"job": job.model_dump(mode="json"), "context": context.model_dump(mode="json")}


def launch(job: TrainingJob, context: StageContext, io: StageIO) -> dict[str, Any]:
    """Train ``job`` on all ranks; returns the run's summary. Raises StageError on failure."""
    output = io.require_output(job.stage)
    LAUNCH_DIR.mkdir(parents=True, exist_ok=True)
    payload = job_payload(job, context)
    with tempfile.NamedTemporaryFile("w", dir=LAUNCH_DIR, prefix=f"{job.stage}-", suffix=".json") as job_json:
        json.dump(payload, job_json, indent=2)
        job_json.flush()
        try:
            run_guarded(launcher_command(job, job_json.name, io), env=worker_env(), capture=False)
        except CommandFailed as exc:
            if exc.returncode == STOPPED_EXIT_CODE:
                raise StageError(
                    f"{job.stage}: training stopped on request; rerun the stage to resume from its checkpoint"
                ) from None
            raise StageError(
                f"{job.stage}: training failed (launcher exit code {exc.returncode}); see the rank logs above"
            ) from None
    return json.loads(run_summary_path(output).read_text())
