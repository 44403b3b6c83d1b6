"""Parameters of the sft stage (``sft:`` in params.yaml): OpenCoder-style multi-stage instruction tuning."""

from typing import Literal

from pydantic import Field, model_validator

from components.params.base import StrictModel
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec, default_benchmarks
from components.params.training import TrainingJob

#: Where an SFT stage's conversations come from.
Source = Literal["mined", "problems", "evolved", "files"]


class SftStageConfig(StrictModel):
    """One SFT stage: its data, how long it trains (``epochs`` or ``steps``) and its learning rate.

    The LR warms up over ``warmup`` steps, then follows a cosine to ``min_lr_ratio * lr`` at the stage end.
    """

    name: str
    #: Where the stage's data comes from, one source or a list: ``mined`` docstring -> body pairs of the
    #: training split, ``problems`` (the problems stage's tested training problems: prompt -> solution),
    #: ``evolved`` (the evol stage's Evol-Instruct pairs), or ``files``.
    source: Source | list[Source] = "mined"
    #: With ``source: files``: JSON-lines files of ``{"instruction", "response"}`` or ``{"messages"}``
    #: (decontaminated against evaluate.benchmarks like all training data).
    data: list[str] = Field(default_factory=list)
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, ge=1)
    lr: float = Field(5e-5, gt=0)
    warmup: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The stage's sources, in order."""
        return tuple(self.source) if isinstance(self.source, list) else (self.source,)

    @model_validator(mode="after")
    def _files_when_files(self) -> "SftStageConfig":
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sft stage {self.name!r}: source must name distinct sources, got {self.source}")
        if ("files" in self.sources) != bool(self.data):
            raise ValueError(f"sft stage {self.name!r}: list data files exactly when source includes 'files'")
        return self

    @model_validator(mode="after")
    def _one_length(self) -> "SftStageConfig":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"sft stage {self.name!r}: set exactly one of epochs and steps")
        if self.steps is not None and self.warmup >= self.steps:
            raise ValueError(f"sft stage {self.name!r}: warmup ({self.warmup}) must be below steps")
        return self


class MinedConfig(StrictModel):
    """The default SFT data, mined from Python files of the training split (see components/sft/mine.py)."""

    enabled: bool = True
    max_pairs: int = Field(5000, ge=1)
    #: Functions / classes whose body (after the docstring) has fewer lines are skipped.
    min_body_lines: int = Field(2, ge=1)


class SftConfig(StrictModel):
    """Instruction tuning of the annealed model; stages run in order on one engine run."""

    stages: list[SftStageConfig] = Field(
        [
            SftStageConfig(name="general", source="mined", steps=20, lr=1e-4, warmup=2),
            SftStageConfig(name="code", source="problems", steps=20, lr=5e-5),
        ],
        min_length=1,
    )
    mined: MinedConfig = MinedConfig()
    #: Render conversations with the tokenizer's ChatML chat template; false: ``prompt\n`` + response + EOS.
    chat_template: bool = True
    #: Train on the prompt tokens too (default: loss on response tokens only, labels -100 on the prompt).
    loss_on_prompt: bool = False
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _unique_names(self) -> "SftConfig":
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"sft.stages: stage names must be unique, got {names}")
        return self


class SftJob(TrainingJob):
    """Instruction tuning: model, engine, ``sft:``, and the benchmarks mined pairs must not overlap."""

    stage: Literal["sft"] = "sft"
    sft: SftConfig = SftConfig()
    decontam: DecontamConfig = DecontamConfig()
    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)
