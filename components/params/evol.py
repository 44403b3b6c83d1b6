"""Parameters of the evol stage (``evol:`` in params.yaml): Evol-Instruct (WizardCoder, PanGu-Coder2)."""

from pydantic import Field, model_validator

from components.params.base import StrictModel
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec, default_benchmarks
from components.params.teacher import TeacherConfig


class EvolFilterConfig(StrictModel):
    """The rules an evolved instruction and its response must pass (each drop is counted by its rule)."""

    min_instruction_chars: int = Field(20, ge=1)
    max_instruction_chars: int = Field(4000, ge=1)
    min_response_chars: int = Field(20, ge=1)
    max_response_chars: int = Field(8000, ge=1)
    #: The response must hold a fenced code block.
    require_code: bool = True
    #: The code must be in the seed's language: parse as Python for Python, and a fence tag, where
    #: there is one, must name the language.
    check_language: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> "EvolFilterConfig":
        for kind in ("instruction", "response"):
            low, high = getattr(self, f"min_{kind}_chars"), getattr(self, f"max_{kind}_chars")
            if low > high:
                raise ValueError(f"evol.filter.min_{kind}_chars ({low}) is above max_{kind}_chars ({high})")
        return self


class EvolConfig(StrictModel):
    """Evolve seed instructions with a teacher, answer them, keep what passes the rules."""

    #: The prompt templates and the evolution operations (YAML; see components/evol/operations.yaml).
    operations: str = "components/evol/operations.yaml"
    #: Seeds from the problems stage's training problems (their evaluation chat request).
    seed_problems: bool = True
    #: Your seed files: JSON lines of ``{"instruction": str, "language": str (optional, python)}``.
    seed_files: list[str] = Field(default_factory=list)
    #: At most this many seeds (lowest hash of the instruction).
    max_seeds: int = Field(1000, ge=1)
    #: Evolution rounds: round r evolves round r-1's surviving instructions (WizardLM's depth).
    rounds: int = Field(1, ge=1)
    #: Decoding of an evolution (sampled) and of a response (greedy).
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    evolve_max_new_tokens: int = Field(256, ge=1)
    response_max_new_tokens: int = Field(512, ge=1)
    #: Keep the seeds' own answers too (a seed answered by the teacher, filtered like the evolved ones).
    answer_seeds: bool = False
    filter: EvolFilterConfig = EvolFilterConfig()


class EvolJob(StrictModel):
    """The evol stage: ``evol:``, the teacher, and decontamination against ``evaluate.benchmarks``."""

    evol: EvolConfig = EvolConfig()
    #: The top-level ``teacher:``; None: the annealed model (the one post-training starts from).
    teacher: TeacherConfig | None = None
    decontam: DecontamConfig = DecontamConfig()
    benchmarks: list[BenchmarkSpec] = Field(default_factory=default_benchmarks)
