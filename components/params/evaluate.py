"""Parameters of HumanEval evaluation (``evaluate:`` in params.yaml): sandbox limits and decoding."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.params.base import StrictModel

#: BigCode harness stop sequences for HumanEval: generation ends at the next top-level statement.
HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


class EvaluateConfig(StrictModel):
    """Execution limits of the sandbox and the sampling settings of the generation step."""

    #: Wall-clock limit per program (seconds), from the start of the program to its end.
    timeout_s: float = Field(3.0, gt=0)
    #: Address-space limit per program (RLIMIT_AS), in MiB.
    memory_mb: int = Field(1024, ge=64)
    #: Programs run at the same time (one sandbox process each).
    workers: int = Field(2, ge=1)
    #: How programs are isolated (docs/security.md): ``auto`` takes the strongest level this machine
    #: allows (``namespaces``: no network, no host files or processes; ``seccomp``: no network;
    #: ``none``), warning loudly below ``namespaces``; a level by name requires it.
    isolation: Literal["auto", "namespaces", "seccomp", "none"] = "auto"
    #: Samples per problem for pass@k (greedy pass@1 needs one).
    n_samples: int = Field(20, ge=1)
    k: list[int] = Field(default_factory=lambda: [1, 10])
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=lambda: list(HUMANEVAL_STOP))
    #: Model stages evaluated, each read from ``<models input>/<stage>`` (an exported HF checkpoint).
    models: list[str] = Field(default_factory=lambda: ["pretrain", "anneal"])
    #: Stages whose model is prompted through its chat template (instruct models).
    chat_models: list[str] = Field(default_factory=lambda: ["sft"])
    #: First N problems only (None: all 164), for quick CPU runs.
    problems_limit: int | None = Field(None, ge=1)
    #: Prompts generated together (left-padded, KV cache).
    batch_size: int = Field(8, ge=1)
    #: Greedy decoding for pass@1 (one completion per problem).
    greedy: bool = True
    #: Sampled decoding (n_samples per problem, temperature/top_p) for pass@k.
    sampling: bool = True
    #: Validation sequences (of model.seq_len tokens) scored for bits per byte.
    bpb_sequences: int = Field(64, ge=1)
    #: torch intra-op threads on CPU (None: torch's default). A small model generates several times
    #: faster on one thread, and the other cores run the sandbox.
    cpu_threads: int | None = Field(1, ge=1)

    @field_validator("k")
    @classmethod
    def _k_positive(cls, k: list[int]) -> list[int]:
        """Every k is >= 1."""
        if not k or min(k) < 1:
            raise ValueError(f"evaluate.k needs values >= 1 (got {k})")
        return k

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvaluateConfig":
        """pass@k is defined only for k <= n_samples."""
        if max(self.k) > self.n_samples:
            raise ValueError(f"evaluate.k = {self.k} has a k above evaluate.n_samples = {self.n_samples}")
        return self


class EvaluateJob(StrictModel):
    """Evaluation: ``evaluate:`` and the context length bits per byte are measured at."""

    evaluate: EvaluateConfig = EvaluateConfig()
    seq_len: int = Field(256, ge=8)
