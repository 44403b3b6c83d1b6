"""Parameters of the register stage (``register:`` in params.yaml)."""

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from components.params.base import StrictModel
from components.report import metric_key

Direction = Literal["max", "min"]
DEFAULT_COMPARE: dict[str, Direction] = {"humaneval.pass_at_1": "max", "val.bpb": "min"}


class PromotionConfig(StrictModel):
    """When the stage moves alias ``champion`` by itself (otherwise: ``codemill promote``)."""

    #: Make every version that passes the gates the champion. Off: only the first one (no champion yet).
    auto: bool = False
    #: A person approves each promotion: the pipeline flow pauses (Prefect ``wait_for_input``) with the
    #: candidate's evaluation table until someone approves or rejects it in the Prefect UI.
    approval: bool = False
    #: How long the paused flow run waits for the decision; then it fails and nothing moves.
    approval_timeout_s: int = Field(86_400, ge=1)


class RegisterConfig(StrictModel):
    """Which exported model to register as ``codemill-<model.name>`` and the gates for alias ``challenger``.

    Metric names are those of ``reports/eval.json`` for the source stage written as MLflow keys
    (``pass@1`` is ``pass_at_1``, see :func:`metric_key`), so that params and tags can carry them.
    A gate on a metric the eval report lacks fails (closed): with no eval report, only a version with no
    ``min_scores``/``max_scores`` can pass.
    """

    #: Model stage to register (default: the last post-training stage): reads ``models/<candidate>/``
    #: and ``reports/eval.json`` ``models.<candidate>``.
    candidate: str = "align"
    #: metric -> lowest allowed value (higher is better, e.g. humaneval.pass_at_1); any metric of the
    #: eval report, by name (``humaneval.gold_bpb``, ``line.exact_match``, ``val.python.bpb``...).
    min_scores: dict[str, float] = Field(default_factory=lambda: {"humaneval.pass_at_1": 0.0})
    #: metric -> highest allowed value (lower is better, e.g. val.bpb).
    max_scores: dict[str, float] = Field(default_factory=dict)
    #: metric -> direction compared with the current champion (``max``: higher is better).
    compare: dict[str, Direction] = Field(default_factory=lambda: dict(DEFAULT_COMPARE))
    #: Largest allowed absolute regression against the champion on each ``compare`` metric.
    tolerance: float = Field(0.0, ge=0)
    promotion: PromotionConfig = PromotionConfig()
    #: Default generation length saved with the model (and in its signature's params schema).
    max_new_tokens: int = Field(32, ge=1)

    @field_validator("min_scores", "max_scores", "compare")
    @classmethod
    def _metric_keys(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if metric_key(name) != name:
                raise ValueError(f"metric {name!r} must be written {metric_key(name)!r} (MLflow key)")
        return value


class RegisterJob(StrictModel):
    """Registration: ``register:`` and ``model.name`` (registered as ``codemill-<name>``)."""

    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    model_name: str = "tiny"

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
