"""The teacher (``teacher:`` in params.yaml): a stronger model that evolves instructions (evol) and
answers problems for ranking (align); null, and each stage falls back on the model it starts from."""

from pydantic import Field, model_validator

from components.params.base import StrictModel


class TeacherConfig(StrictModel):
    """A stronger model: it evolves instructions and answers them (evol), and its greedy answers join the
    policy's samples (align, ranked first among equals). A local model (``model``) or an
    OpenAI-compatible endpoint (``endpoint`` + ``name``)."""

    #: An exported HF directory or a ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` URI.
    model: str | None = None
    #: Base URL of an OpenAI-compatible API, ending in /v1 (``codemill serve``, vLLM, a hosted API).
    endpoint: str | None = Field(None, pattern=r"^https?://\S+$")
    #: The model name the endpoint serves (its ``/v1/models`` id).
    name: str | None = None
    #: Environment variable holding the endpoint's API key (sent as ``Authorization: Bearer``).
    api_key_env: str = "CODEMILL_TEACHER_API_KEY"

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of teacher.model and teacher.endpoint")
        if self.endpoint is not None and not self.name:
            raise ValueError("teacher.name: the model name the endpoint serves is required")
        return self
