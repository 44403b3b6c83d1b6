"""Parameters of the clean stage (``clean:`` in params.yaml): PII redaction and decontamination."""

from typing import Literal, get_args

from pydantic import Field, field_validator

from components.params.base import StrictModel
from components.params.evaluate import BenchmarkSpec, default_benchmarks

#: The PII kinds the redaction table knows (components/clean/pii.py); each has one placeholder.
PiiKind = Literal["email", "ip_address", "key"]
#: The rules of that table, by name (a test checks the table has exactly these).
PII_RULE_NAMES = (
    "private_key", "url_credentials", "aws_access_key_id", "aws_secret_key", "github_token",
    "github_fine_grained_token", "gitlab_token", "slack_token", "slack_webhook", "stripe_key", "npm_token",
    "pypi_token", "openai_key", "google_api_key", "sk_key", "bearer_token", "jwt", "secret_assignment",
    "email", "ipv4", "ipv6",
)  # fmt: skip


class PIIConfig(StrictModel):
    """Which PII kinds are redacted."""

    enabled: bool = True
    kinds: list[PiiKind] = Field(default_factory=lambda: list(get_args(PiiKind)))

    @field_validator("kinds")
    @classmethod
    def _no_repeats(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds are listed more than once: {kinds}")
        return kinds


class DecontamConfig(StrictModel):
    """How training data is checked against the benchmarks of ``evaluate.benchmarks`` (every configured
    benchmark is checked, from that one list)."""

    #: Drop documents containing a benchmark problem.
    enabled: bool = True
    #: Word n-gram size of the overlap check (13 as in NeMo Curator).
    ngram: int = Field(13, ge=1)
    #: Exact-substring check: benchmark strings shorter than this (after whitespace normalisation) are
    #: too generic to mean contamination and are skipped.
    min_chars: int = Field(50, ge=1)


class CleanConfig(StrictModel):
    """PII + decontamination."""

    pii: PIIConfig = PIIConfig()
    decontam: DecontamConfig = DecontamConfig()


class CleanJob(StrictModel):
    """The clean stage: ``clean:`` and the benchmarks decontamination checks (``evaluate.benchmarks``)."""

    clean: CleanConfig = CleanConfig()
    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)
