"""Register stage: log the exported model to MLflow, register it, tag it, gate it into challenger/champion.

Decisions (see docs/registry.md):
- Eval metrics come from ``reports/eval.json`` ``models.<register.candidate>``; without them every gate on a
  metric fails (closed), so a version without eval results only passes when ``min_scores``/``max_scores``
  are empty.
- A version that passes the gates gets alias ``challenger``. It also becomes ``champion`` when
  ``register.promotion.auto`` is on, or when there is no champion yet (something must be served; the
  gates still apply). Otherwise ``codemill promote VERSION`` moves the champion by hand.
"""

from __future__ import annotations

from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from packaging.version import Version

from components.errors import StageError
from components.params import StageContext
from components.params.register import RegisterJob
from components.register import registry
from components.report import StageReport, read_eval_scores
from components.stage_runner import StageIO

#: Pinned to the installed versions (MLflow's inferred list adds torchvision, which then fails to import).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "accelerate")
INPUT_EXAMPLE = ["def add(a, b):"]


def read_eval_metrics(path: str | Path, source: str) -> dict[str, float]:
    """Numeric eval metrics of model stage ``source`` from the eval report ({} if the file is absent)."""
    try:
        return read_eval_scores(path).get(source, {})
    except ValueError as exc:
        raise StageError(str(exc)) from exc


def pip_requirements() -> list[str]:
    """``name==version`` for what serving the model needs, as installed here (local labels dropped)."""
    return [f"{name}=={Version(installed_version(name)).public}" for name in REQUIREMENTS]


def signature(max_new_tokens: int) -> Any:
    """Strings in, strings out, with generation params settable per request (``params`` schema)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema(
        [
            ParamSpec("max_new_tokens", "long", max_new_tokens),
            ParamSpec("do_sample", "boolean", False),
            ParamSpec("temperature", "double", 1.0),
            ParamSpec("top_p", "double", 1.0),
        ]
    )
    return ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]), params=params
    )


def log_model(model_dir: Path, name: str, max_new_tokens: int) -> str:
    """Log the HF checkpoint in ``model_dir`` to the active run and register it; returns the version."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return log_loaded_model(model, AutoTokenizer.from_pretrained(model_dir), name, max_new_tokens)


def log_loaded_model(model: Any, tokenizer: Any, name: str, max_new_tokens: int) -> str:
    """Log a loaded model and tokenizer (transformers flavor) to the active run and register them as a
    new version of ``name``; returns the version."""
    import mlflow

    info = mlflow.transformers.log_model(
        {"model": model, "tokenizer": tokenizer},
        name="model",
        task="text-generation",
        signature=signature(max_new_tokens),
        input_example=INPUT_EXAMPLE,
        pip_requirements=pip_requirements(),
        model_config={"max_new_tokens": max_new_tokens},
        registered_model_name=name,
    )
    return str(info.registered_model_version)


def register_model(job: RegisterJob, model_dir: Path, eval_path: Path) -> StageReport:
    """Register ``model_dir`` as a new version of ``codemill-<model.name>`` inside the active MLflow run."""
    import mlflow

    from components.register.lineage import lineage_tags

    config = job.register_
    if not (model_dir / "config.json").exists():
        raise StageError(
            f"{model_dir}: no Hugging Face checkpoint (config.json) from stage {config.candidate!r}"
        )
    client = mlflow.MlflowClient()
    name = registry.registered_name(job.model_name)
    metrics = read_eval_metrics(eval_path, config.candidate)
    champion = registry.alias_version(name, registry.CHAMPION, client)
    champion_metrics = registry.version_metrics(champion, list(config.compare)) if champion else {}

    version = log_model(model_dir, name, config.max_new_tokens)
    run = mlflow.active_run()
    gates = registry.check_gates(config, metrics, champion_metrics)
    passed = all(gate.passed for gate in gates)
    tags = {registry.metric_tag(metric): repr(value) for metric, value in metrics.items()}
    tags["source_stage"] = config.candidate
    if run is None:
        raise StageError("register: no active MLflow run (the stage runner opens one)")
    tags.update(lineage_tags(client, client.get_run(run.info.run_id)))
    tags.update(registry.gate_tags(gates))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)

    if passed:
        client.set_registered_model_alias(name, registry.CHALLENGER, version)
        if config.promotion.approval:  # a person decides, in the pipeline flow (flows/approval.py)
            client.set_model_version_tag(name, version, registry.TAG_APPROVAL, registry.PENDING)
        elif config.promotion.auto or champion is None:
            why = "promotion.auto" if config.promotion.auto else "first version to pass the gates"
            registry.promote(
                name, version, f"passed gates ({why})", "codemill register", client, action="auto"
            )

    files = [path for path in sorted(model_dir.rglob("*")) if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    report = StageReport(
        "register", files_in=len(files), files_out=len(files) if passed else 0, bytes_in=size
    )
    report.bytes_out = size if passed else 0
    for gate in gates:
        if not gate.passed:
            report.count_drop(f"gate.{gate.name}")
    report.metrics = {"version": float(version), "gates_passed": float(passed)}
    report.metrics.update({f"eval.{key}": value for key, value in metrics.items()})
    aliases = sorted(client.get_model_version(name, version).aliases)
    report.details = {
        "model": name,
        "version": version,
        "aliases": aliases,
        "champion_before": str(champion.version) if champion else None,
        "gates": registry.gate_report(gates),
        "eval": metrics,
        "tags": dict(sorted(tags.items())),
    }
    return report


def run(job: RegisterJob, context: StageContext, io: StageIO) -> StageReport:
    """Register models/<register.candidate> in MLflow and gate it into aliases challenger/champion."""
    return register_model(job, Path(io.input("model")), Path(io.input("eval")))
