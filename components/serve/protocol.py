"""Request bodies of the OpenAI and TGI APIs as pydantic models: a bad field is a 400 that names it.

As in vLLM's ``entrypoints/openai/protocol.py``: the server never sees an unchecked request. Unknown
fields are refused (``extra="forbid"``), types are strict (a number is not a string), and ranges are
checked here. Parameters a client library always sends but this server does not implement (TGI's
``watermark``, OpenAI's ``presence_penalty``...) are accepted at their neutral value only; any other value
is refused naming the field, never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)


class Body(BaseModel):
    """Strict request body: no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


def neutral(field: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """``value`` when it is one of the neutral ``allowed`` values, else a ValueError naming ``field``."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported by this server (allowed: {allowed})")
    return value


class Sampling(Body):
    """What OpenAI's completion and chat bodies share."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: Any = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None, info: ValidationInfo) -> float | None:
        return neutral(str(info.field_name), value, (None, 0, 0.0))

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        return neutral("logprobs", value, (None, False, 0))

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not stop for stop in stops):
            raise ValueError("at most 4 non-empty stop sequences")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(Sampling):
    """``POST /v1/completions``: ``suffix`` turns the prompt into the model's fill-in-the-middle prompt."""

    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int = Field(16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("at least one prompt")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        return neutral("echo", value, (False,))

    def prompts(self) -> list[str]:
        """The prompt(s) as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(Body):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(Sampling):
    """``POST /v1/chat/completions``: the conversation goes through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_budget(self) -> int:
        """``max_completion_tokens``, else ``max_tokens``, else 16."""
        return self.max_completion_tokens or self.max_tokens or 16


#: TGI parameters this server does not implement, and the neutral values it accepts for them.
TGI_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "decoder_input_details": (False,),
    "top_k": (None, 0),
    "repetition_penalty": (None, 1.0),
    "frequency_penalty": (None, 0.0),
    "typical_p": (None, 1.0),
    "truncate": (None,),
    "watermark": (False,),
    "best_of": (None, 1),
    "top_n_tokens": (None, 0),
    "grammar": (None,),
    "adapter_id": (None,),
}


class GenerateParameters(Body):
    """TGI's ``parameters`` (what llm-vscode and huggingface_hub's ``InferenceClient`` send)."""

    max_new_tokens: int = Field(20, ge=1)
    temperature: float | None = Field(None, gt=0.0)
    top_p: float | None = Field(None, gt=0.0, lt=1.0)
    do_sample: bool = False
    stop: list[str] = Field(default_factory=list, max_length=4)
    return_full_text: bool = False
    seed: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    typical_p: float | None = None
    truncate: int | None = None
    watermark: bool = False
    best_of: int | None = None
    top_n_tokens: int | None = None
    grammar: Any = None
    adapter_id: str | None = None

    @field_validator(*TGI_NEUTRAL)
    @classmethod
    def _unsupported_are_neutral(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral(str(info.field_name), value, TGI_NEUTRAL[str(info.field_name)])

    @property
    def sampling(self) -> bool:
        """TGI samples when ``do_sample`` is set, or a temperature / top_p is given."""
        return self.do_sample or self.temperature is not None or self.top_p is not None


class GenerateRequest(Body):
    """``POST /generate``, ``/generate_stream`` and TGI's ``POST /`` (``stream`` picks which)."""

    inputs: str
    parameters: GenerateParameters = GenerateParameters()
    stream: bool = False


class AttributionRequest(Body):
    """``POST /v1/attribution``: the training documents nearest to a snippet."""

    snippet: str = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=100)
    threshold: float | None = Field(None, ge=0.0, le=1.0)


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, itself or as the items of a list (``list[ChatMessage]``)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_path(model: type[BaseModel], location: tuple[Any, ...]) -> str:
    """The dotted field of a pydantic error location (``parameters.max_new_tokens``), without the union
    member tags pydantic adds (``prompt.str`` is ``prompt``)."""
    parts: list[str] = []
    current: Any = model
    for part in location:
        if isinstance(part, int):
            parts.append(str(part))
            continue
        fields = getattr(current, "model_fields", {}) if isinstance(current, type) else {}
        if part in fields:
            parts.append(str(part))
            current = nested_model(fields[part].annotation)
        elif not fields and not parts:
            parts.append(str(part))
    return ".".join(parts) or "body"


def describe_errors(error: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """``(param, message)`` of a validation error of ``model``: the dotted field that is wrong and what
    is wrong with each, for a 400 body that names the field."""
    messages: dict[str, str] = {}
    for item in error.errors():
        location, text = tuple(item["loc"]), item["msg"]
        where = field_path(model, location)
        if item["type"] == "extra_forbidden":  # the last part is the unknown field's name
            parent = field_path(model, location[:-1]) if len(location) > 1 else ""
            where, text = f"{parent}.{location[-1]}".lstrip("."), "unknown field"
        messages.setdefault(where, text)
    param = next(iter(messages))
    return param, "; ".join(f"{where}: {text}" for where, text in messages.items())
