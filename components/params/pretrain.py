"""Parameters of the pretrain stage (``pretrain:`` in params.yaml); the engine's are in ``train:``."""

from typing import Literal

from pydantic import Field, model_validator

from components.params.base import StrictModel
from components.params.training import FimRates, TrainingJob


class PretrainConfig(StrictModel):
    """Steps, learning-rate schedule and weight decay of pretraining from scratch.

    FIM rates are ``tokenize.fim_rate`` / ``tokenize.fim_spm_rate`` (applied by the token dataset).
    """

    steps: int = Field(300, ge=1)
    #: Peak learning rate, reached after ``warmup`` steps.
    lr: float = Field(1e-3, gt=0)
    #: Where the decay ends (cosine, and wsd with ``decay_fraction`` > 0).
    min_lr: float = Field(1e-4, ge=0)
    warmup: int = Field(30, ge=0)
    #: ``wsd``: warmup, stable at ``lr``, then linear decay to ``min_lr`` over the last ``decay_fraction``
    #: of the steps; ``cosine``: warmup then cosine decay to ``min_lr``.
    schedule: Literal["wsd", "cosine"] = "wsd"
    #: wsd only. 0 ends pretraining at the peak LR and leaves the decay to the anneal stage.
    decay_fraction: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _schedule_fits(self) -> "PretrainConfig":
        if self.warmup >= self.steps:
            raise ValueError(
                f"pretrain.warmup ({self.warmup}) must be smaller than pretrain.steps ({self.steps})"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"pretrain.min_lr ({self.min_lr}) exceeds pretrain.lr ({self.lr})")
        return self


class PretrainJob(TrainingJob):
    """Pretraining: model, engine, FIM rates and ``pretrain:``."""

    stage: Literal["pretrain"] = "pretrain"
    fim: FimRates = FimRates()
    pretrain: PretrainConfig = PretrainConfig()
