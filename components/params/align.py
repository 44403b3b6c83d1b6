"""Parameters of the align stage (``align:`` in params.yaml): RRTF, PanGu-Coder2's ranking alignment."""

from typing import Literal

from pydantic import Field, model_validator

from components.params.base import StrictModel
from components.params.evaluate import SandboxLimits
from components.params.teacher import TeacherConfig
from components.params.training import TrainingJob


class AlignConfig(StrictModel):
    """Iterations of sample -> rank by tests -> train (RRHF ranking loss + SFT on the best response)."""

    iterations: int = Field(1, ge=1)
    #: Responses sampled from the policy per training problem.
    samples: int = Field(4, ge=2)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    #: Training problems used per iteration (the same ones every iteration: lowest hash of the id).
    max_problems: int | None = Field(None, ge=1)
    #: Prompt through the chat template (the SFT model is an instruct model); false: plain completion.
    chat: bool = True
    #: Optimizer steps per iteration (each step: train.micro_batch problems per rank, all their responses).
    steps: int = Field(10, ge=1)
    lr: float = Field(2e-5, gt=0)
    warmup: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    #: Weights of RRHF's two terms: the ranking hinge loss and the cross-entropy of the best response.
    rank_weight: float = Field(1.0, ge=0)
    sft_weight: float = Field(1.0, ge=0)
    #: Responses sampled once (from the starting policy) per held-out problem, to measure ranking
    #: accuracy on; the policy's held-out pass rate is greedy.
    heldout_samples: int = Field(4, ge=2)

    @model_validator(mode="after")
    def _warmup_below_steps(self) -> "AlignConfig":
        if self.warmup >= self.steps:
            raise ValueError(f"align.warmup ({self.warmup}) must be below align.steps ({self.steps})")
        return self


class AlignJob(TrainingJob):
    """Alignment: model, engine, ``align:``, and the sandbox that scores responses."""

    stage: Literal["align"] = "align"
    align: AlignConfig = AlignConfig()
    #: The top-level ``teacher:``; None: the policy's own greedy answer stands in (runs everywhere).
    teacher: TeacherConfig | None = None
    sandbox: SandboxLimits = SandboxLimits()
