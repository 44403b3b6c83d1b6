"""Parameters of the problems stage (``problems:`` in params.yaml): problems with tests for post-training."""

from pydantic import Field

from components.params.base import StrictModel
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec, SandboxLimits, default_benchmarks


class ProblemsConfig(StrictModel):
    """Where problems come from, how many are kept and how they are split (docs/post-training.md)."""

    #: Mine the training split's Python functions whose docstrings carry doctest examples.
    mine_doctests: bool = True
    #: Mine the functions the training split's test files import and assert on (their self-contained
    #: assertions become the tests).
    mine_repo_tests: bool = True
    #: Doctest examples a mined function needs (each becomes one test).
    min_tests: int = Field(1, ge=1)
    #: The user's own problem files (HumanEval or MBPP format, detected from the fields), local or s3.
    files: list[str] = Field(default_factory=list)
    #: At most this many problems are kept: the ones with the lowest hash of their prompt.
    max_problems: int = Field(2000, ge=1)
    #: Share of problems set aside (by a hash of the prompt) to measure alignment on: the policy's pass
    #: rate and its ranking accuracy.
    heldout_fraction: float = Field(0.2, gt=0, lt=1)


class ProblemsJob(StrictModel):
    """The problems stage: ``problems:``, decontamination against ``evaluate.benchmarks``, and the
    sandbox that checks each canonical solution against its own tests."""

    problems: ProblemsConfig = ProblemsConfig()
    decontam: DecontamConfig = DecontamConfig()
    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)
    sandbox: SandboxLimits = SandboxLimits()
