"""The model registry side of codemill: gates, and moving alias ``champion`` by hand (promote, rollback).

Conventions (docs/registry.md): registered model ``codemill-<model.name>``; alias ``challenger`` is the newest
version that passed the gates, alias ``champion`` is the one served. Eval metrics live on each version as
tags ``eval.<metric>``; every move of ``champion`` is recorded on the versions as ``champion.*`` tags
(who, why, when, which version it replaced), so ``rollback`` can walk back the chain of champions.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import StageError
from components.params.register import RegisterConfig
from components.report import metric_key

if TYPE_CHECKING:  # types only: mlflow takes seconds to import, and is imported where it is used
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"

TAG_EVAL = "eval."
TAG_GATES_PASSED = "gates.passed"
TAG_GATES_FAILED = "gates.failed"
TAG_ACTION = "champion.action"  # promote | auto | rollback
TAG_BY = "champion.by"
TAG_REASON = "champion.reason"
TAG_AT = "champion.at"
TAG_PREVIOUS = "champion.previous"  # the champion this version replaced when it was promoted
TAG_REPLACED = "champion.replaced"  # the champion a rollback to this version replaced
TAG_ROLLED_BACK_BY = "champion.rolled_back_by"
TAG_ROLLED_BACK_REASON = "champion.rolled_back_reason"
#: Promotion by approval (``register.promotion.approval``): pending | approved | rejected, who, why, when.
TAG_APPROVAL = "approval.status"
TAG_APPROVAL_BY = "approval.by"
TAG_APPROVAL_REASON = "approval.reason"
TAG_APPROVAL_AT = "approval.at"
TAG_APPROVAL_FLOW_RUN = "approval.flow_run"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class RegistryError(StageError):
    """A registry operation cannot be done (no champion, unknown version, failed gates without --force)."""


def registered_name(model_name: str) -> str:
    """The registered model name of ``model.name``: ``codemill-<name>``."""
    return f"codemill-{model_name}"


def metric_tag(metric: str) -> str:
    """The version tag holding eval ``metric``: ``eval.pass_at_1``."""
    return TAG_EVAL + metric_key(metric)


# ---------------------------------------------------------------- gates


@dataclass(frozen=True)
class GateResult:
    """One gate: ``value <op> bound`` on an eval metric; a missing value fails (closed)."""

    name: str
    metric: str
    op: str
    bound: float
    value: float | None
    passed: bool


OPERATORS = {">=": operator.ge, "<=": operator.le}


def gate_rules(
    config: RegisterConfig, champion_metrics: dict[str, float]
) -> list[tuple[str, str, str, float]]:
    """The gates as data, ``(name, metric, op, bound)``: absolute bounds, then no regression vs champion.

    A ``compare`` metric is only gated when the champion has a value for it (first version: no comparison).
    """
    rules = [(f"min:{metric}", metric, ">=", bound) for metric, bound in sorted(config.min_scores.items())]
    rules += [(f"max:{metric}", metric, "<=", bound) for metric, bound in sorted(config.max_scores.items())]
    for metric, direction in sorted(config.compare.items()):
        if metric not in champion_metrics:
            continue
        best = champion_metrics[metric]
        if direction == "max":
            rules.append((f"vs_champion:{metric}", metric, ">=", best - config.tolerance))
        else:
            rules.append((f"vs_champion:{metric}", metric, "<=", best + config.tolerance))
    return rules


def check_gates(
    config: RegisterConfig, metrics: dict[str, float], champion_metrics: dict[str, float]
) -> list[GateResult]:
    """Evaluate every gate of :func:`gate_rules` on a candidate's eval ``metrics``."""
    results = []
    for name, metric, op, bound in gate_rules(config, champion_metrics):
        value = metrics.get(metric)
        passed = value is not None and OPERATORS[op](value, bound)
        results.append(GateResult(name, metric, op, bound, value, passed))
    return results


def gate_tags(results: list[GateResult]) -> dict[str, str]:
    """Version tags summarising gate results: ``gates.passed`` and the failed gates' names."""
    failed = [result.name for result in results if not result.passed]
    return {TAG_GATES_PASSED: str(not failed).lower(), TAG_GATES_FAILED: ",".join(failed)}


def gate_report(results: list[GateResult]) -> list[dict[str, Any]]:
    """Gate results as JSON-ready dicts (for reports/register.json)."""
    return [asdict(result) for result in results]


# ---------------------------------------------------------------- reading the registry


def connect(tracking_uri: str) -> None:
    """Point the registry calls of this process at ``tracking_uri``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def reported(action: Callable[[], str]) -> str:
    """Run a registry ``action``; an MLflow error (unknown model or version...) becomes a RegistryError."""
    from mlflow.exceptions import MlflowException

    try:
        return action()
    except MlflowException as exc:
        raise RegistryError(exc.message) from exc


def _client(client: MlflowClient | None) -> MlflowClient:
    from mlflow import MlflowClient

    return client or MlflowClient()


def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version ``alias`` points to, or ``None`` (no such alias, or no such registered model)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(client).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_dirs(folder: Path) -> tuple[Path, Path]:
    """``(weights directory, tokenizer directory)`` of a model folder: an MLflow transformers model (its
    MLmodel names the weights folder; the tokenizer is ``components/tokenizer``) or a plain Hugging Face
    checkpoint (both are the folder itself)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.exists():
        return folder, folder
    flavor = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")).get("flavors") or {}).get("transformers")
    if not flavor:
        raise RegistryError(f"{mlmodel}: not a transformers model (no 'transformers' flavor)")
    weights, tokenizer = folder / flavor.get("model_binary", "model"), folder / "components" / "tokenizer"
    return weights, tokenizer if tokenizer.is_dir() else weights


def download_model(uri: str, destination: str | Path) -> tuple[Path, Path]:
    """Download a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) logged with the
    transformers flavor; returns (weights directory, tokenizer directory)."""
    import mlflow

    root = Path(
        reported(lambda: mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    )
    model_dir, tokenizer_dir = model_dirs(root)
    if not (model_dir / "config.json").is_file():
        raise RegistryError(f"{uri}: no transformers checkpoint in the model's artifacts ({model_dir})")
    return model_dir, tokenizer_dir


def version_metrics(version: ModelVersion, metrics: list[str]) -> dict[str, float]:
    """The eval ``metrics`` recorded as tags on ``version`` (those it has)."""
    values = {}
    for metric in metrics:
        raw = version.tags.get(metric_tag(metric))
        if raw is not None:
            values[metric] = float(raw)
    return values


# ---------------------------------------------------------------- moving champion


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _set_tags(client: MlflowClient, name: str, version: str | int, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def promote(
    name: str,
    version: str,
    reason: str,
    user: str,
    client: MlflowClient | None = None,
    force: bool = False,
    action: str = "promote",
) -> str | None:
    """Point ``champion`` of ``name`` at ``version``, recording who, why and the previous champion.

    A version whose gates failed is refused unless ``force``. Returns the previous champion's version.
    """
    client = _client(client)
    target = client.get_model_version(name, str(version))
    if target.tags.get(TAG_GATES_PASSED) == "false" and not force:
        failed = target.tags.get(TAG_GATES_FAILED, "")
        raise RegistryError(
            f"{name} version {version} failed its gates ({failed}); use --force to promote it"
        )
    previous = alias_version(name, CHAMPION, client)
    previous_version = str(previous.version) if previous else None
    if previous_version == str(target.version):
        return previous_version
    client.set_registered_model_alias(name, CHAMPION, target.version)
    tags = {
        TAG_ACTION: action,
        TAG_BY: user,
        TAG_REASON: reason,
        TAG_AT: _now(),
        TAG_PREVIOUS: previous_version or "",
    }
    _set_tags(client, name, target.version, tags)
    return previous_version


def version_tags(name: str, version: str, client: MlflowClient | None = None) -> dict[str, str]:
    """The tags of version ``version`` of ``name``."""
    return dict(_client(client).get_model_version(name, str(version)).tags)


def approval_table(name: str, version: str, client: MlflowClient | None = None) -> str:
    """Markdown for the reviewer: the candidate's eval tags beside the champion's, and its gates."""
    client = _client(client)
    candidate = client.get_model_version(name, str(version))
    champion = alias_version(name, CHAMPION, client)
    against = f"champion v{champion.version}" if champion else "champion (none)"
    lines = [
        f"### Promote {name} version {version} to `{CHAMPION}`?",
        "",
        f"| metric | candidate v{version} | {against} |",
        "| --- | --- | --- |",
    ]
    for key in sorted(tag for tag in candidate.tags if tag.startswith(TAG_EVAL)):
        theirs = champion.tags.get(key, "") if champion else ""
        lines.append(f"| {key[len(TAG_EVAL) :]} | {candidate.tags[key]} | {theirs} |")
    failed = candidate.tags.get(TAG_GATES_FAILED)
    lines += [
        "",
        f"Gates passed: {candidate.tags.get(TAG_GATES_PASSED, 'n/a')}"
        + (f" (failed: {failed})" if failed else ""),
    ]
    return "\n".join(lines)


def decide_promotion(
    name: str,
    version: str,
    approve: bool,
    reviewer: str,
    reason: str,
    flow_run: str = "",
    client: MlflowClient | None = None,
) -> str | None:
    """Record a person's decision on promoting ``version``; an approval moves ``champion`` to it (the
    gates still apply), a rejection leaves the champion as it is. Returns the champion afterwards."""
    client = _client(client)
    tags = {
        TAG_APPROVAL: APPROVED if approve else REJECTED,
        TAG_APPROVAL_BY: reviewer,
        TAG_APPROVAL_REASON: reason,
        TAG_APPROVAL_AT: _now(),
        TAG_APPROVAL_FLOW_RUN: flow_run,
    }
    _set_tags(client, name, version, tags)
    if approve:
        promote(name, version, f"approved: {reason}", reviewer, client, action="approved")
    champion = alias_version(name, CHAMPION, client)
    return str(champion.version) if champion else None


def rollback(
    name: str, reason: str, user: str, client: MlflowClient | None = None, to_version: str | None = None
) -> tuple[str, str]:
    """Move ``champion`` back to the champion it replaced (or to ``to_version``); returns ``(from, to)``.

    The abandoned version gets ``champion.rolled_back_by/_reason``; the restored one records the move
    (``champion.action=rollback``, who, why, ``champion.replaced``) but keeps ``champion.previous``, so
    repeated rollbacks walk further back through the history.
    """
    client = _client(client)
    current = alias_version(name, CHAMPION, client)
    if current is None:
        raise RegistryError(f"{name} has no {CHAMPION}: nothing to roll back")
    target = to_version or current.tags.get(TAG_PREVIOUS)
    if not target:
        raise RegistryError(
            f"{name} version {current.version} replaced no earlier {CHAMPION}; pass a version"
        )
    current_version = str(current.version)
    target_version = str(client.get_model_version(name, str(target)).version)
    if target_version == current_version:
        raise RegistryError(f"{name} version {target_version} is already the {CHAMPION}")
    client.set_registered_model_alias(name, CHAMPION, target_version)
    _set_tags(client, name, current_version, {TAG_ROLLED_BACK_BY: user, TAG_ROLLED_BACK_REASON: reason})
    tags = {TAG_ACTION: "rollback", TAG_BY: user, TAG_REASON: reason, TAG_AT: _now()}
    _set_tags(client, name, target_version, {**tags, TAG_REPLACED: current_version})
    return current_version, target_version
