"""Parameters of evaluation (``evaluate:`` in params.yaml): the benchmarks, sandbox limits, decoding,
the smooth metrics and their intervals (docs/evaluation.md)."""

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.params.base import StrictModel

BenchmarkFormat = Literal["humaneval", "mbpp", "multipl-e", "infilling", "problems"]
BuiltinBenchmark = Literal["humaneval", "humaneval-infilling-single", "humaneval-infilling-multi"]
#: Benchmark names are metric-key prefixes (``humaneval.pass_at_1``): letters, digits, ``_``, ``-``.
BENCHMARK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class BenchmarkSpec(StrictModel):
    """One entry of ``evaluate.benchmarks``: a problem file (or a built-in set) and how to read it."""

    #: Metric prefix and report name (``humaneval`` -> ``humaneval.pass_at_1``).
    name: str
    #: JSONL file (``.gz`` allowed), a project path or ``s3://``; or ``builtin`` instead.
    file: str | None = None
    #: ``humaneval`` (the installed package's 164 problems) or an infilling set built from it.
    builtin: BuiltinBenchmark | None = None
    #: File format; None: detected from the fields of the first record.
    format: BenchmarkFormat | None = None
    #: At most this many problems, the same ones every run (chosen by a hash of the task id).
    limit: int | None = Field(None, ge=1)
    #: Also sample ``evaluate.n_samples`` completions per problem for pass@k (greedy pass@1 always runs).
    sampled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not BENCHMARK_NAME.match(name):
            raise ValueError(f"benchmark name {name!r} must match {BENCHMARK_NAME.pattern}")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> "BenchmarkSpec":
        """Exactly one of ``file`` and ``builtin``."""
        if (self.file is None) == (self.builtin is None):
            raise ValueError(f"benchmark {self.name!r}: give exactly one of 'file' and 'builtin'")
        return self


def default_benchmarks() -> list[BenchmarkSpec]:
    """HumanEval and its single- and multi-line infilling sets (FIM is evaluated by default)."""
    return [
        BenchmarkSpec(name="humaneval", builtin="humaneval"),
        BenchmarkSpec(name="humaneval-infill-line", builtin="humaneval-infilling-single", sampled=False),
        BenchmarkSpec(name="humaneval-infill-block", builtin="humaneval-infilling-multi", sampled=False),
    ]


class SandboxLimits(StrictModel):
    """How generated (or mined) programs run: the sandbox's limits and isolation. ``evaluate:`` holds
    them; the problems and align stages run programs with the same ones."""

    #: Wall-clock limit per program (seconds), from the start of the program to its end (compile steps
    #: of compiled languages have their own limit, in the language table).
    timeout_s: float = Field(3.0, gt=0)
    #: Address-space limit per program (RLIMIT_AS), in MiB (a JVM gets at least what it needs).
    memory_mb: int = Field(1024, ge=64)
    #: Programs run at the same time (one sandbox process each).
    workers: int = Field(2, ge=1)
    #: How programs are isolated (docs/security.md): ``auto`` takes the strongest level this machine
    #: allows (``namespaces``: no network, no host files or processes; ``seccomp``: no network;
    #: ``none``), warning loudly below ``namespaces``; a level by name requires it.
    isolation: Literal["auto", "namespaces", "seccomp", "none"] = "auto"


class EvaluateConfig(SandboxLimits):
    """What is evaluated, the sandbox's limits (:class:`SandboxLimits`), decoding, and the smooth metrics."""

    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)
    #: Samples per problem for pass@k (greedy pass@1 needs one).
    n_samples: int = Field(20, ge=1)
    k: list[int] = Field(default_factory=lambda: [1, 10])
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    #: Model stages evaluated, each read from ``<models input>/<stage>`` (an exported HF checkpoint).
    models: list[str] = Field(default_factory=lambda: ["pretrain", "anneal"])
    #: Stages whose model is prompted through its chat template (instruct models).
    chat_models: list[str] = Field(default_factory=lambda: ["sft"])
    #: Prompts generated together (left-padded, KV cache); ``auto``: from free GPU memory (64 on CPU).
    batch_size: int | Literal["auto"] = 8
    #: Greedy decoding for pass@1 (one completion per problem).
    greedy: bool = True
    #: Sampled decoding (n_samples per problem, temperature/top_p) for pass@k.
    sampling: bool = True
    #: Held-out documents (``data/holdout``) scored for bits per byte, per language (up to this many
    #: tokens in all; documents in a fixed order).
    holdout_tokens: int = Field(65_536, ge=1)
    #: Lines of held-out documents completed for next-line exact match (CodeXGLUE-style).
    line_completions: int = Field(200, ge=0)
    #: Tokens generated per line completion.
    line_max_new_tokens: int = Field(32, ge=1)
    #: Bootstrap resamples of every interval, and their confidence level.
    bootstrap_resamples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0, lt=1)
    #: torch intra-op threads on CPU (None: torch's default). A small model generates several times
    #: faster on one thread, and the other cores run the sandbox.
    cpu_threads: int | None = Field(1, ge=1)
    #: Models evaluated at the same time, each in a process of its own (None: one per core on CPU,
    #: one on a GPU).
    model_workers: int | None = Field(None, ge=1)

    def sandbox(self) -> SandboxLimits:
        """The sandbox settings, for the stages that run programs as evaluation does (problems, align)."""
        return SandboxLimits(**self.model_dump(include=set(SandboxLimits.model_fields)))

    @field_validator("k")
    @classmethod
    def _k_positive(cls, k: list[int]) -> list[int]:
        """Every k is >= 1."""
        if not k or min(k) < 1:
            raise ValueError(f"evaluate.k needs values >= 1 (got {k})")
        return k

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, benchmarks: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        names = [spec.name for spec in benchmarks]
        if repeated := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"benchmark names repeat: {repeated}")
        return benchmarks

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvaluateConfig":
        """pass@k is defined only for k <= n_samples."""
        if max(self.k) > self.n_samples:
            raise ValueError(f"evaluate.k = {self.k} has a k above evaluate.n_samples = {self.n_samples}")
        return self


class EvaluateJob(StrictModel):
    """Evaluation: ``evaluate:`` (the seed of sampling and bootstrap is the project's)."""

    evaluate: EvaluateConfig = EvaluateConfig()
