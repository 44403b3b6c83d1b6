"""Typed, validated parameters: the one place that reads ``params.yaml``.

Every knob lives in ``params.yaml``. :func:`load_params` parses it (plus optional
overlay files such as ``infra/profiles/h100.yaml``) into frozen pydantic models.
An unknown key, a wrong type or an impossible value raises :class:`ParamsError`
naming the file and the dotted key, before any stage does work.

Each stage owns its config class in its own package (``components/<stage>/config.py``);
this module only assembles them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.anneal.config import AnnealConfig
from components.clean.config import CleanConfig
from components.curate.config import CurateConfig
from components.dedup.config import DedupConfig
from components.evaluate.config import EvaluateConfig
from components.ingest.config import IngestConfig
from components.pretrain.config import PretrainConfig
from components.register.config import RegisterConfig
from components.sft.config import SftConfig
from components.strict_model import StrictModel
from components.tokenize.config import TokenizeConfig
from components.train.config import ModelConfig, TrainConfig
from components.validate.config import ValidateConfig

DEFAULT_PARAMS = "params.yaml"


class ParamsError(ValueError):
    """A parameter file is missing, malformed, or holds an invalid value."""


class ProjectConfig(StrictModel):
    """Names and seeds shared by every stage."""

    name: str = "codemill"
    seed: int = Field(1234, ge=0)


class TrackingConfig(StrictModel):
    """MLflow conventions (see components/tracking.py)."""

    experiment: str = "codemill"
    #: Used when MLFLOW_TRACKING_URI is unset. Relative sqlite paths resolve against the project root.
    uri: str = "sqlite:///mlflow.db"
    #: Artifact root for a newly created experiment (local folder or s3:// URL).
    artifact_location: str = "mlartifacts"


class ExecutorConfig(StrictModel):
    """How per-shard work is mapped: a local process pool, or a Dask scheduler when ``address`` is set."""

    workers: int = Field(2, ge=1)
    address: str | None = None
    #: Scratch space of multi-step stages (dedup's per-shard MinHash features): a path every worker can
    #: read (shared filesystem or ``s3://``). ``null``: a local temporary directory (the local pool, or a
    #: Dask cluster on this machine).
    work_dir: str | None = None


class OrchestrationConfig(StrictModel):
    """How the Prefect pipeline flow runs the stages (``flows/pipeline.py``)."""

    #: Times a failed stage task is retried (transient failures), and the pause between tries.
    retries: int = Field(0, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


class DataConfig(StrictModel):
    """Layout of the Parquet shards passed between stages."""

    #: Target uncompressed content bytes per shard; bounds the memory a worker needs.
    shard_bytes: int = Field(8_000_000, gt=0)


#: Sections whose name clashes with a pydantic/ABC attribute: stored as ``<name>_``, aliased to ``<name>``.
ALIASED_SECTIONS = ("validate", "register")


class Params(StrictModel):
    """All of ``params.yaml``."""

    project: ProjectConfig = ProjectConfig()
    tracking: TrackingConfig = TrackingConfig()
    executor: ExecutorConfig = ExecutorConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    curate: CurateConfig = CurateConfig()
    dedup: DedupConfig = DedupConfig()
    clean: CleanConfig = CleanConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    anneal: AnnealConfig = AnnealConfig()
    sft: SftConfig = SftConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    def section(self, name: str) -> BaseModel:
        """The config section named ``name`` in params.yaml (``validate`` is ``validate_`` here, etc.)."""
        return getattr(self, f"{name}_" if name in ALIASED_SECTIONS else name)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in; nested dicts merge, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted_key='a.b'``, creating dicts on the way."""
    *parents, leaf = dotted_key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"cannot set {dotted_key!r}: {part!r} is not a mapping")
    node[leaf] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read parameter file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_params(raw: dict[str, Any], source: str = DEFAULT_PARAMS) -> Params:
    """Validate a raw mapping into :class:`Params`; ``source`` names the file in errors."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "<root>"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{source}: {key}: {err['msg']}{shown}")
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def load_params(
    path: str | Path = DEFAULT_PARAMS,
    overlays: list[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Params:
    """Load ``params.yaml``, merge overlay files and ``dotted.key: value`` overrides, and validate."""
    raw = read_yaml(path)
    sources = [str(path)]
    for overlay in overlays or []:
        raw = deep_merge(raw, read_yaml(overlay))
        sources.append(str(overlay))
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return parse_params(raw, source=" + ".join(sources))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: ``{'dedup': {'level': 'file'}} -> {'dedup.level': 'file'}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
