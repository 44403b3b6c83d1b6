"""Parameters of the validate stage (``validate:`` in params.yaml): the Great Expectations suite.

The suite also reads other sections, so it checks what the earlier stages promised:
``ingest.languages`` and ``ingest.extensions`` (the language set), ``dedup.level`` (sha256 unique at the
exact and file levels),
``clean.pii`` (which PII kinds must be gone) and ``clean.decontam`` (which benchmarks must be absent).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from components.languages import emitted_languages
from components.params.base import StrictModel
from components.params.clean import PII_RULE_NAMES, CleanConfig
from components.params.dedup import DedupLevel
from components.params.evaluate import BenchmarkSpec, default_benchmarks


class ValidateConfig(StrictModel):
    """Bounds and rules the expectation suite checks."""

    #: Name of the expectation suite (``gx/expectations/<suite>.json``) and of its checkpoint.
    suite: str = Field("codemill_clean", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Every document's ``size_bytes`` lies in ``[min_size_bytes, max_size_bytes]``.
    min_size_bytes: int = Field(1, ge=0)
    max_size_bytes: int = Field(3_000_000, gt=0)
    #: Rules of components/clean/pii.py that must find nothing after clean (rules of a kind that
    #: ``clean.pii`` does not redact are skipped).
    pii_rules: list[str] = Field(default_factory=lambda: ["email", "aws_access_key_id", "private_key"])
    #: Unexpected values shown per failing expectation (error message and Data Docs).
    samples: int = Field(5, ge=1, le=100)

    @field_validator("pii_rules")
    @classmethod
    def _known_rules(cls, rules: list[str]) -> list[str]:
        unknown = sorted(set(rules) - set(PII_RULE_NAMES))
        if unknown:
            raise ValueError(f"unknown PII rule(s) {unknown}; known: {list(PII_RULE_NAMES)}")
        return rules

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateConfig:
        if self.min_size_bytes > self.max_size_bytes:
            raise ValueError(
                f"min_size_bytes ({self.min_size_bytes}) exceeds max_size_bytes ({self.max_size_bytes})"
            )
        return self


class ValidateJob(StrictModel):
    """Validation: ``validate:`` and what the earlier stages promised (module docstring)."""

    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    #: What ingest can emit under ``ingest.languages`` and ``ingest.extensions`` (``emitted_languages``).
    languages: list[str] = Field(default_factory=lambda: sorted(emitted_languages(None, {})))
    #: ``dedup.level``.
    dedup_level: DedupLevel = "file"
    clean: CleanConfig = CleanConfig()
    #: ``evaluate.benchmarks`` (the contamination check covers each).
    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
