"""Parameters of the anneal stage (``anneal:`` in params.yaml)."""

from typing import Literal

from pydantic import Field

from components.params.base import StrictModel
from components.params.training import FimRates, TrainingJob


class HighQualityRule(StrictModel):
    """Which training documents form the high-quality subset, from the signal columns curate keeps.

    A document is high quality when its ``quality_score`` is at least the ``min_quality_quantile``
    quantile of the training documents' scores, and (when required) it has a docstring / tests.
    """

    min_quality_quantile: float = Field(0.75, ge=0, le=1)
    require_docstring: bool = False
    require_tests: bool = False


class AnnealConfig(StrictModel):
    """Continue from the exported pretrain model: LR from pretraining's final LR linearly to 0, on a mix."""

    steps: int = Field(60, ge=1)
    #: Share of training sequences drawn from the high-quality subset (the rest: the original mix).
    hq_fraction: float = Field(0.5, ge=0, le=1)
    hq_rule: HighQualityRule = HighQualityRule()
    weight_decay: float = Field(0.1, ge=0)


class AnnealJob(TrainingJob):
    """Annealing: model, engine, FIM rates and ``anneal:``."""

    stage: Literal["anneal"] = "anneal"
    fim: FimRates = FimRates()
    anneal: AnnealConfig = AnnealConfig()
