"""Typed, validated parameters: the one place that reads ``params.yaml`` (the ground floor of the house).

Every knob lives in ``params.yaml``. :func:`load_params` parses it (plus optional overlay files such as
``infra/profiles/h100.yaml`` and ``--set`` overrides) into frozen pydantic models. An unknown key, a
wrong type or an impossible value raises :class:`ParamsError` naming the file and the dotted key, before
any stage does work.

Each stage's section is a class in this package (``components/params/<stage>.py``), importing nothing
above this floor. A stage is handed :meth:`Params.stage_config` (its own section, or a *job* that adds
the few other values it reads) and :meth:`Params.context` (seed, executor, shard layout, tracking), never
all of :class:`Params`. Override values (``--set``, profiles, ablation values) are YAML text, parsed here
only (:func:`parse_overrides`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import ParamsError
from components.languages import emitted_languages
from components.params.align import AlignConfig, AlignJob
from components.params.anneal import AnnealConfig, AnnealJob
from components.params.attribution import AttributionConfig, AttributionJob
from components.params.base import StrictModel
from components.params.clean import CleanConfig, CleanJob
from components.params.curate import CurateConfig
from components.params.dedup import DedupConfig
from components.params.evaluate import EvaluateConfig, EvaluateJob
from components.params.evol import EvolConfig, EvolJob
from components.params.ingest import IngestConfig
from components.params.pretrain import PretrainConfig, PretrainJob
from components.params.problems import ProblemsConfig, ProblemsJob
from components.params.register import RegisterConfig, RegisterJob
from components.params.serve import ServeConfig
from components.params.sft import SftConfig, SftJob
from components.params.shared import (
    DataConfig,
    ExecutorConfig,
    OrchestrationConfig,
    ProjectConfig,
    StageContext,
    TrackingConfig,
)
from components.params.teacher import TeacherConfig
from components.params.tokenize import TokenizeConfig
from components.params.training import FimRates, ModelConfig, TrainConfig, TrainingJob
from components.params.validate import ValidateConfig, ValidateJob

__all__ = [
    "DEFAULT_PARAMS",
    "ExecutorConfig",
    "Params",
    "ParamsError",
    "StageContext",
    "StrictModel",
    "TrainingJob",
    "flatten",
    "load_params",
    "parse_overrides",
    "parse_params",
    "parse_value",
    "read_yaml",
    "yaml_text",
]

DEFAULT_PARAMS = "params.yaml"

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
    problems: ProblemsConfig = ProblemsConfig()
    evol: EvolConfig = EvolConfig()
    align: AlignConfig = AlignConfig()
    #: A stronger model for evol and align (None: each falls back on the model it starts from).
    teacher: TeacherConfig | None = None
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    attribution: AttributionConfig = AttributionConfig()
    serve: ServeConfig = ServeConfig()

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    def section(self, name: str) -> BaseModel:
        """The config section named ``name`` in params.yaml (``validate`` is ``validate_`` here, etc.)."""
        return getattr(self, f"{name}_" if name in ALIASED_SECTIONS else name)

    def context(self) -> StageContext:
        """What every stage may read besides its own section."""
        return StageContext(
            project=self.project, executor=self.executor, data=self.data, tracking=self.tracking
        )

    def stage_config(self, stage: str) -> BaseModel:
        """What stage ``stage`` reads: its section, or its job (its section plus the values it borrows)."""
        try:
            build = STAGE_CONFIGS[stage]
        except KeyError:
            raise ParamsError(f"no stage {stage!r}; stages: {sorted(STAGE_CONFIGS)}") from None
        return build(self)


def _fim(params: Params) -> FimRates:
    return FimRates(rate=params.tokenize.fim_rate, spm_rate=params.tokenize.fim_spm_rate)


#: How each stage's config is assembled from :class:`Params` (the only place that knows what a stage
#: borrows from other sections; ``dvc.yaml`` lists the same keys as the stage's ``params``).
STAGE_CONFIGS: dict[str, Callable[[Params], BaseModel]] = {
    "sources": lambda p: p.ingest,
    "ingest": lambda p: p.ingest,
    "curate": lambda p: p.curate,
    "dedup": lambda p: p.dedup,
    "clean": lambda p: CleanJob(clean=p.clean, benchmarks=p.evaluate.benchmarks),
    "validate": lambda p: ValidateJob(
        validate_=p.validate_,
        languages=sorted(emitted_languages(p.ingest.languages, p.ingest.extensions)),
        dedup_level=p.dedup.level,
        clean=p.clean,
        benchmarks=p.evaluate.benchmarks,
    ),
    "tokenize": lambda p: p.tokenize,
    "pretrain": lambda p: PretrainJob(model=p.model, train=p.train, fim=_fim(p), pretrain=p.pretrain),
    "anneal": lambda p: AnnealJob(model=p.model, train=p.train, fim=_fim(p), anneal=p.anneal),
    "sft": lambda p: SftJob(
        model=p.model, train=p.train, sft=p.sft, decontam=p.clean.decontam, benchmarks=p.evaluate.benchmarks
    ),
    "problems": lambda p: ProblemsJob(
        problems=p.problems,
        decontam=p.clean.decontam,
        benchmarks=p.evaluate.benchmarks,
        sandbox=p.evaluate.sandbox(),
    ),
    "evol": lambda p: EvolJob(
        evol=p.evol, teacher=p.teacher, decontam=p.clean.decontam, benchmarks=p.evaluate.benchmarks
    ),
    "align": lambda p: AlignJob(
        model=p.model, train=p.train, align=p.align, teacher=p.teacher, sandbox=p.evaluate.sandbox()
    ),
    "evaluate": lambda p: EvaluateJob(evaluate=p.evaluate),
    "register": lambda p: RegisterJob(register_=p.register_, model_name=p.model.name),
    "attribution": lambda p: AttributionJob(attribution=p.attribution, dedup=p.dedup),
}

#: The job class of each training stage (the worker rebuilds the job from its JSON).
TRAINING_JOBS: dict[str, type[TrainingJob]] = {
    "pretrain": PretrainJob,
    "anneal": AnnealJob,
    "sft": SftJob,
    "align": AlignJob,
}


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


def parse_value(text: str, key: str = "value") -> Any:
    """One override value as DVC's ``--set-param KEY=VALUE`` reads it: YAML text (``0.1``, ``true``,
    ``null``, ``[a, b]``); an empty value stays the empty string, as DVC keeps it."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError as exc:
        raise ParamsError(f"{key}={text!r}: not a YAML value ({exc})") from None


def parse_overrides(overrides: Mapping[str, str] | None) -> dict[str, Any]:
    """``{"dedup.level": "file"}`` with each value parsed by :func:`parse_value`: the one place override
    text (``--set``, profiles, ablation values) becomes values."""
    return {key: parse_value(text, key) for key, text in (overrides or {}).items()}


def yaml_text(value: object) -> str:
    """``value`` as one line of YAML that YAML 1.1 and 1.2 read back the same (``2e-05`` would be a string
    in YAML 1.1; this writes ``2.0e-05``), for ``dvc exp run --set-param``."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000).strip()
    return text.removesuffix("...").strip()


def parse_params(raw: dict[str, Any], source: str = DEFAULT_PARAMS) -> Params:
    """Validate a raw mapping into :class:`Params`; ``source`` names the file in errors."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(validation_message(exc, source)) from None


def validation_message(exc: ValidationError, source: str) -> str:
    """One line per error of ``exc``: ``source: dotted.key: message (got value)``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{source}: {key}: {err['msg']}{shown}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def load_params(
    path: str | Path = DEFAULT_PARAMS,
    overlays: list[str | Path] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Params:
    """Load ``params.yaml``, merge overlay files and ``dotted.key: YAML text`` overrides, and validate."""
    raw = read_yaml(path)
    sources = [str(path)]
    for overlay in overlays or []:
        raw = deep_merge(raw, read_yaml(overlay))
        sources.append(str(overlay))
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    if overrides:
        sources.append("--set " + " ".join(f"{key}={value}" for key, value in overrides.items()))
    params = parse_params(raw, source=" + ".join(sources))
    check_project_files(params, Path(path).resolve().parent, " + ".join(sources))
    return params


def check_project_files(params: Params, root: Path, source: str) -> None:
    """Files the stages read that DVC must track exist inside the project ``root``: benchmark files (a
    missing one would otherwise fail the clean stage, after three others). ``s3://`` paths are checked
    by the stage that reads them."""
    for index, spec in enumerate(params.evaluate.benchmarks):
        key, path = f"evaluate.benchmarks[{index}].file", spec.file
        if path is None or "://" in path:
            continue
        resolved = (root / path).resolve()
        if resolved != root and root not in resolved.parents:
            raise ParamsError(
                f"{source}: {key}: {path} is outside the project {root} (DVC could not track it)"
            )
        if not resolved.is_file():
            raise ParamsError(f"{source}: {key}: {path}: benchmark file not found")


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
