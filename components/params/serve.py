"""Parameters of the inference server (``serve:`` in params.yaml; ``codemill serve``)."""

from __future__ import annotations

from pydantic import Field

from components.params.base import StrictModel


class ServeLimits(StrictModel):
    """What one request may ask for; beyond these the server answers 400 naming the field."""

    #: Largest ``max_tokens`` / ``max_new_tokens`` of one request.
    max_tokens: int = Field(256, ge=1)
    #: Longest prompt (or chat conversation) in characters, checked before tokenizing.
    max_prompt_chars: int = Field(32_768, ge=1)
    #: Longest prompt in tokens; the prompt plus ``max_tokens`` must also fit the model's context.
    max_prompt_tokens: int = Field(2048, ge=1)
    #: Largest ``n`` (completions per prompt) and number of prompts in one request.
    max_n: int = Field(8, ge=1)
    max_prompts: int = Field(16, ge=1)
    #: Generation stops at this deadline (seconds after the request arrived): no CPU burns past it.
    request_timeout_s: float = Field(60.0, gt=0)


class ServeConfig(StrictModel):
    """The server: where it listens, how it batches, how much work it admits, how it follows its alias."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: Alias of ``codemill-<model.name>`` to serve and follow (the registry's ``champion``).
    alias: str = "champion"
    #: Seconds between checks of the alias; a moved alias is loaded beside the old model, then swapped.
    poll_s: float = Field(2.0, gt=0)
    #: Rows (prompt x n) generated together; 1 turns batching off.
    max_batch_size: int = Field(8, ge=1)
    #: How long the batcher waits for more requests once one has arrived.
    batch_wait_ms: float = Field(5.0, ge=0)
    #: Rows queued or generating at once; a request beyond it gets 429 at once.
    max_in_flight: int = Field(64, ge=1)
    #: Environment variable holding the API key clients must send (``Authorization: Bearer KEY``);
    #: unset or empty: no key is asked for.
    api_key_env: str = "CODEMILL_API_KEY"
    limits: ServeLimits = ServeLimits()
