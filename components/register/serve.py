"""``codemill serve``: serve the champion of ``codemill-<model.name>`` over HTTP (MLflow's scoring server).

The server runs in the foreground under a guard (``components/processes.py``): a stop signal, or the
death of this process, ends its whole tree. Endpoints: ``GET /ping``, ``POST /invocations`` with
``{"inputs": ["def add(a, b):"], "params": {...}}``.
"""

from __future__ import annotations

import sys

from components.processes import CommandFailed, run_guarded, tool_env
from components.register.registry import CHAMPION, registered_name


def serve_command(model_name: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow models serve`` command line for the champion of ``codemill-<model_name>``."""
    uri = f"models:/{registered_name(model_name)}@{CHAMPION}"
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    return [*mlflow_cli, "-h", host, "-p", str(port)]


def serve(model_name: str, port: int, host: str = "127.0.0.1", tracking_uri: str | None = None) -> int:
    """Serve the champion of ``codemill-<model_name>`` on ``host:port`` until stopped; its exit code."""
    env = tool_env({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else None)
    return run_foreground(serve_command(model_name, port, host), env)


def run_foreground(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` under a guard until it exits or this process is stopped; returns its exit code
    (``128 + signal`` when a signal stopped it or us). Nothing of its tree outlives this call."""
    try:
        run_guarded(command, env=env, capture=False)
    except CommandFailed as exc:
        return exc.returncode
    except SystemExit as exc:  # SIGTERM/SIGHUP of this process: the guard has ended the server
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return 130
    return 0
