"""``codemill serve``: serve the champion of ``codemill-<model.name>`` over HTTP (MLflow's scoring server).

The server runs in the foreground in its own process group; SIGINT/SIGTERM/SIGHUP are forwarded to the
whole group, and whatever is left of the group when the server exits is killed, so no worker outlives it.
Endpoints: ``GET /ping``, ``POST /invocations`` with ``{"inputs": ["def add(a, b):"], "params": {...}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from components.config import DEFAULT_PARAMS, ParamsError, load_params
from components.register.registry import CHAMPION, registered_name

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def serve_command(model_name: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow models serve`` command line for the champion of ``codemill-<model_name>``."""
    uri = f"models:/{registered_name(model_name)}@{CHAMPION}"
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    return [*mlflow_cli, "-h", host, "-p", str(port)]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM process group ``pgid``, then SIGKILL whatever is still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def run_foreground(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` in a new process group, forwarding stop signals to it; returns its exit code.

    A child killed by a signal gives ``128 + signal`` (shell convention). The group is killed on return.
    """
    proc = subprocess.Popen(command, env=env, start_new_session=True)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        kill_group(proc.pid)
    return 128 - code if code < 0 else code


def serve(model_name: str, port: int, host: str = "127.0.0.1", tracking_uri: str | None = None) -> int:
    """Serve the champion of ``codemill-<model_name>`` on ``host:port``; returns its exit code."""
    from components.cli import tool_env

    env = tool_env({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else None)
    return run_foreground(serve_command(model_name, port, host), env)


def serve_main(argv: list[str] | None = None) -> int:
    """``codemill serve [--port N] [--host H]``: serve the champion model (foreground)."""
    from components.tracking import tracking_uri

    parser = argparse.ArgumentParser(prog="codemill serve", description=serve_main.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    parser.add_argument("--model", default=None, help="model.name to serve (default: from params)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="port (default: 5001)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"codemill serve: error: {exc}", file=sys.stderr)
        return 2
    return serve(args.model or params.model.name, args.port, args.host, tracking_uri(params))
