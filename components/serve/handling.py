"""Request handling shared by the OpenAI and TGI routes: errors that name the field, body parsing, and
:class:`Server`, which checks a request against the limits, turns it into engine rows and waits for,
or streams, their results. Every answer names the version that produced it (``X-Codemill-Model-Version``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from components.params.serve import ServeConfig
from components.serve.engine import TIMEOUT, Busy, Decoding, Engine, Row
from components.serve.models import LoadedModel, ModelSlot, ModelSource
from components.serve.protocol import (
    describe_errors,
)

VERSION_HEADER = "X-Codemill-Model-Version"
#: Seconds a request may wait beyond its deadline for the engine to end it before it is answered 504.
DEADLINE_GRACE_S = 5.0


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, the offending ``param`` and a message."""

    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


@dataclass(frozen=True)
class Prompt:
    """One prompt to complete, already in the model's format (FIM or chat template applied)."""

    text: str
    param: str  # the request field it came from, for errors


def openai_error(error: RequestError) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {
        "error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.status}
    }
    return JSONResponse(body, status_code=error.status, headers=retry_after(error))


def tgi_error(error: RequestError) -> JSONResponse:
    """TGI's error body: ``{"error": message, "error_type": kind}``."""
    kind = {400: "validation", 429: "overloaded", 504: "timeout"}.get(error.status, "generation")
    return JSONResponse(
        {"error": error.message, "error_type": kind}, status_code=error.status, headers=retry_after(error)
    )


def retry_after(error: RequestError) -> dict[str, str]:
    """``Retry-After`` for a 429."""
    return {"Retry-After": "1"} if error.status == 429 else {}


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The request body validated as ``model``; a 400 naming the field otherwise."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise RequestError(400, "body: not valid JSON", "body") from None
        param, message = describe_errors(exc, model)
        raise RequestError(400, message, param) from None


class Server:
    """Turns requests into rows for the engine and rows back into OpenAI/TGI answers."""

    def __init__(self, engine: Engine, slot: ModelSlot, config: ServeConfig, source: ModelSource) -> None:
        self.engine, self.slot, self.config, self.source = engine, slot, config, source

    @property
    def limits(self) -> Any:
        return self.config.limits

    # ------------------------------------------------------------------ checks

    def check_model(self, requested: str | None) -> LoadedModel:
        """The served model; 404 when the request names another one."""
        served = self.slot.current
        if requested not in (None, "", served.name, self.source.uri):
            raise RequestError(
                404,
                f"model: {requested!r} is not served here (serving {served.name!r})",
                "model",
                "not_found_error",
            )
        return served

    def check_prompts(
        self, prompts: Sequence[Prompt], max_tokens: int, n: int, served: LoadedModel, token_param: str
    ) -> None:
        """Request limits (serve.limits) and the model's context; 400 naming the field."""
        limits = self.limits
        if max_tokens > limits.max_tokens:
            raise RequestError(
                400,
                f"{token_param}: {max_tokens} exceeds serve.limits.max_tokens={limits.max_tokens}",
                token_param,
            )
        if n > limits.max_n:
            raise RequestError(400, f"n: {n} exceeds serve.limits.max_n={limits.max_n}", "n")
        if len(prompts) > limits.max_prompts:
            raise RequestError(
                400,
                f"prompt: {len(prompts)} prompts exceed serve.limits.max_prompts={limits.max_prompts}",
                "prompt",
            )
        for prompt in prompts:
            if len(prompt.text) > limits.max_prompt_chars:
                raise RequestError(
                    400,
                    f"{prompt.param}: {len(prompt.text)} characters exceed "
                    f"serve.limits.max_prompt_chars={limits.max_prompt_chars}",
                    prompt.param,
                )
            tokens = served.count_tokens(prompt.text)
            if tokens > limits.max_prompt_tokens:
                raise RequestError(
                    400,
                    f"{prompt.param}: {tokens} tokens exceed serve.limits.max_prompt_tokens="
                    f"{limits.max_prompt_tokens}",
                    prompt.param,
                )
            if tokens + max_tokens > served.context:
                raise RequestError(
                    400,
                    f"{prompt.param}: {tokens} prompt tokens + {token_param}={max_tokens} "
                    f"exceed the model's context of {served.context} tokens",
                    token_param,
                )

    # ------------------------------------------------------------------ running rows

    def start_rows(
        self,
        prompts: Sequence[Prompt],
        n: int,
        max_tokens: int,
        decoding: Decoding,
        stop: tuple[str, ...],
        end_tokens: tuple[str, ...] = (),
    ) -> tuple[list[Row], asyncio.Queue[tuple[int, tuple[str, Any]]]]:
        """Rows for every prompt x n, queued on the engine; their events arrive on the returned queue as
        ``(row index, event)``. 429 when the engine is full."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, tuple[str, Any]]] = asyncio.Queue()
        deadline = time.monotonic() + self.limits.request_timeout_s

        def listener(index: int) -> Callable[[tuple[str, Any]], None]:
            def send(event: tuple[str, Any]) -> None:  # called on the engine thread
                loop.call_soon_threadsafe(events.put_nowait, (index, event))

            return send

        texts = [prompt.text for prompt in prompts for _ in range(n)]
        rows = [
            Row(text, max_tokens, decoding, deadline, listener(index), stop, end_tokens)
            for index, text in enumerate(texts)
        ]
        try:
            self.engine.submit(rows)
        except Busy as exc:
            raise RequestError(429, f"server busy: {exc}; retry later", None, "rate_limit_error") from None
        return rows, events

    async def next_event(self, rows: Sequence[Row], events: asyncio.Queue) -> tuple[int, tuple[str, Any]]:
        """The next row event; past the deadline (plus a grace) the rows are cancelled and it is a 504."""
        remaining = rows[0].deadline + DEADLINE_GRACE_S - time.monotonic()
        try:
            return await asyncio.wait_for(events.get(), timeout=max(remaining, 0.001))
        except TimeoutError:
            cancel(rows)
            raise self.timeout_error() from None

    def timeout_error(self) -> RequestError:
        return RequestError(
            504,
            f"generation did not finish within serve.limits.request_timeout_s="
            f"{self.limits.request_timeout_s}",
            None,
            "timeout",
        )

    async def complete(self, rows: Sequence[Row], events: asyncio.Queue) -> None:
        """Wait until every row has finished; 504 if one hit the deadline."""
        try:
            while not all(row.finished for row in rows):
                await self.next_event(rows, events)
        except asyncio.CancelledError:
            cancel(rows)
            raise
        self.raise_failures(rows)

    def raise_failures(self, rows: Sequence[Row]) -> None:
        reasons = {row.finish_reason for row in rows}
        if TIMEOUT in reasons:
            raise self.timeout_error()
        if "error" in reasons:
            raise RequestError(500, "generation failed (see the server log)", None, "server_error")

    async def first_event(self, rows: Sequence[Row], events: asyncio.Queue) -> tuple[int, tuple[str, Any]]:
        """The first event of a stream (so errors before any text become HTTP statuses)."""
        try:
            first = await self.next_event(rows, events)
        except asyncio.CancelledError:
            cancel(rows)
            raise
        if rows[first[0]].finish_reason in (TIMEOUT, "error"):
            cancel(rows)
            self.raise_failures([rows[first[0]]])
        return first

    async def stream(
        self,
        rows: Sequence[Row],
        events: asyncio.Queue,
        first: tuple[int, tuple[str, Any]],
        chunk: Callable[[int, tuple[str, Any]], Sequence[dict[str, Any]]],
        done: Sequence[str] = (),
    ) -> AsyncIterator[bytes]:
        """Server-sent events: ``chunk(index, event)`` bodies as ``data:`` lines, then the ``done`` lines.
        A client that goes away cancels its rows."""
        try:
            event, ended = first, 0
            while True:  # until every row's "done" event (its last text comes before it)
                for body in chunk(*event):
                    yield f"data: {json.dumps(body)}\n\n".encode()
                ended += event[1][0] == "done"
                if ended == len(rows):
                    break
                try:
                    event = await self.next_event(rows, events)
                except RequestError as exc:
                    yield f"data: {json.dumps({'error': exc.message, 'error_type': 'timeout'})}\n\n".encode()
                    return
            for line in done:
                yield f"data: {line}\n\n".encode()
        finally:
            cancel(rows)

    def headers(self, rows: Sequence[Row]) -> dict[str, str]:
        """The response header naming the version that answered."""
        return {VERSION_HEADER: answered_version(rows, self.slot.current.version)}

    @staticmethod
    def fingerprint(served: LoadedModel, rows: Sequence[Row]) -> str:
        """``NAME/VERSION`` of the model that answered (OpenAI's ``system_fingerprint``)."""
        return f"{served.name}/{answered_version(rows, served.version)}"


def answered_version(rows: Sequence[Row], default: str) -> str:
    """The version that generated the rows (set when their batch starts), else ``default``."""
    return next((row.version for row in rows if row.version), default)


def cancel(rows: Sequence[Row]) -> None:
    """Cancel the rows that are still running (the engine ends them at its next step)."""
    for row in rows:
        if not row.finished:
            row.cancel()
