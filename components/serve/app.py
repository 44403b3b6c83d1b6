"""The HTTP API: OpenAI-compatible completions/chat/models, TGI's generate/generate_stream, attribution.

Bodies are checked by :mod:`components.serve.protocol` (400 naming the field), limits by
:class:`~components.params.serve.ServeLimits` (400 naming the field), capacity by the engine (429).
Every answer names the version that produced it: header ``X-Codemill-Model-Version`` and, in OpenAI
bodies, ``system_fingerprint`` (``NAME/VERSION``). Streams are server-sent events; a stream starts once
its first row is generating, so its header names the version that answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from components.evaluate.generate import fim_prompt
from components.params.serve import ServeConfig
from components.serve.engine import CANCELLED, TIMEOUT, Busy, Decoding, Engine, Row
from components.serve.models import LoadedModel, ModelSlot, ModelSource, weight_bytes
from components.serve.protocol import (
    AttributionRequest,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    describe_errors,
)
from components.tokens.tokenizer import IM_END

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
            return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))

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
        version = next((row.version for row in rows if row.version), self.slot.current.version)
        return {VERSION_HEADER: version}

    @staticmethod
    def fingerprint(served: LoadedModel, rows: Sequence[Row]) -> str:
        version = next((row.version for row in rows if row.version), served.version)
        return f"{served.name}/{version}"


def cancel(rows: Sequence[Row]) -> None:
    """Cancel the rows that are still running (the engine ends them at its next step)."""
    for row in rows:
        if not row.finished:
            row.cancel()


def usage(rows: Sequence[Row], n: int) -> dict[str, int]:
    """OpenAI's token counts (prompt tokens counted once per prompt, not per ``n``)."""
    prompt = sum(row.prompt_tokens for row in rows[::n])
    completion = sum(len(row.token_ids) for row in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(row: Row) -> str:
    """OpenAI's finish_reason (``stop`` | ``length``)."""
    return "length" if row.finish_reason == "length" else "stop"


def decoding_of(temperature: float, top_p: float, seed: int | None) -> Decoding:
    """The engine's decoding setting for an OpenAI request."""
    return Decoding(temperature, top_p if temperature > 0 else 1.0, seed)


def create_app(server: Server, attribution: Any | None = None, api_key: str | None = None) -> FastAPI:
    """The FastAPI application; the engine and alias follower run for the app's lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="codemill", lifespan=lifespan)
    openai_paths = ("/v1/",)

    @app.middleware("http")
    async def errors_and_key(request: Request, call_next: Callable) -> Response:
        is_openai = request.url.path.startswith(openai_paths)
        render = openai_error if is_openai else tgi_error
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return render(
                    RequestError(
                        401,
                        "missing or wrong API key (Authorization: Bearer KEY)",
                        "authorization",
                        "authentication_error",
                    )
                )
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return (openai_error if request.url.path.startswith(openai_paths) else tgi_error)(exc)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        served = server.slot.current
        return {
            "status": "ok",
            "model": served.name,
            "version": served.version,
            "batches": server.engine.batches,
        }

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """TGI's /info: what is served and its limits."""
        served = server.slot.current
        return {
            "model_id": served.name,
            "model_sha": served.version,
            "model_dtype": str(next(served.model.parameters()).dtype),
            "max_input_tokens": server.limits.max_prompt_tokens,
            "max_total_tokens": served.context,
            "max_concurrent_requests": server.config.max_in_flight,
            "max_batch_size": server.config.max_batch_size,
            "version": "codemill",
        }

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        served = server.slot.current
        card = {
            "id": served.name,
            "object": "model",
            "created": 0,
            "owned_by": "codemill",
            "version": served.version,
            "alias": server.source.alias,
            "quantization": served.quantization,
            "weight_bytes": weight_bytes(served.model),
            "max_model_len": served.context,
        }
        return JSONResponse({"object": "list", "data": [card]}, headers={VERSION_HEADER: served.version})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse_body(request, CompletionRequest)
        served = server.check_model(body.model)
        param = "prompt"
        if body.suffix is not None:
            prompts = [Prompt(fim_prompt(text, body.suffix), "prompt") for text in body.prompts()]
        else:
            prompts = [Prompt(text, param) for text in body.prompts()]
        server.check_prompts(prompts, body.max_tokens, body.n, served, "max_tokens")
        decoding = decoding_of(body.temperature, body.top_p, body.seed)
        rows, events = server.start_rows(prompts, body.n, body.max_tokens, decoding, body.stop_sequences())
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": served.name,
                "system_fingerprint": server.fingerprint(served, rows),
                "choices": choices,
            }

        if not body.stream:
            await server.complete(rows, events)
            choices = [
                {"index": i, "text": row.text, "logprobs": None, "finish_reason": finish_reason(row)}
                for i, row in enumerate(rows)
            ]
            return JSONResponse(
                {**envelope(choices), "usage": usage(rows, body.n)}, headers=server.headers(rows)
            )

        def chunk(index: int, event: tuple[str, Any]) -> list[dict[str, Any]]:
            kind, value = event
            if kind == "text":
                return [envelope([{"index": index, "text": value, "logprobs": None, "finish_reason": None}])]
            if value == CANCELLED:
                return []
            return [
                envelope(
                    [
                        {
                            "index": index,
                            "text": "",
                            "logprobs": None,
                            "finish_reason": finish_reason(rows[index]),
                        }
                    ]
                )
            ]

        first = await server.first_event(rows, events)
        return StreamingResponse(
            server.stream(rows, events, first, chunk, ["[DONE]"]),
            media_type="text/event-stream",
            headers=server.headers(rows),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        served = server.check_model(body.model)
        messages = [message.model_dump() for message in body.messages]
        text = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts = [Prompt(text, "messages")]
        budget = body.token_budget()
        token_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        server.check_prompts(prompts, budget, body.n, served, token_param)
        decoding = decoding_of(body.temperature, body.top_p, body.seed)
        rows, events = server.start_rows(prompts, body.n, budget, decoding, body.stop_sequences(), (IM_END,))
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": ident,
                "object": kind,
                "created": created,
                "model": served.name,
                "system_fingerprint": server.fingerprint(served, rows),
                "choices": choices,
            }

        if not body.stream:
            await server.complete(rows, events)
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": row.text},
                    "logprobs": None,
                    "finish_reason": finish_reason(row),
                }
                for i, row in enumerate(rows)
            ]
            body_out = {**envelope("chat.completion", choices), "usage": usage(rows, body.n)}
            return JSONResponse(body_out, headers=server.headers(rows))

        started: set[int] = set()

        def chunk(index: int, event: tuple[str, Any]) -> list[dict[str, Any]]:
            kind, value = event
            out = []
            if index not in started:
                started.add(index)
                out.append(
                    envelope(
                        "chat.completion.chunk",
                        [
                            {
                                "index": index,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ],
                    )
                )
            if kind == "text":
                out.append(
                    envelope(
                        "chat.completion.chunk",
                        [{"index": index, "delta": {"content": value}, "finish_reason": None}],
                    )
                )
            elif value != CANCELLED:
                out.append(
                    envelope(
                        "chat.completion.chunk",
                        [{"index": index, "delta": {}, "finish_reason": finish_reason(rows[index])}],
                    )
                )
            return out

        first = await server.first_event(rows, events)
        return StreamingResponse(
            server.stream(rows, events, first, chunk, ["[DONE]"]),
            media_type="text/event-stream",
            headers=server.headers(rows),
        )

    async def tgi(body: GenerateRequest, stream: bool) -> Response:
        served = server.check_model(None)
        parameters = body.parameters
        prompts = [Prompt(body.inputs, "inputs")]
        server.check_prompts(prompts, parameters.max_new_tokens, 1, served, "parameters.max_new_tokens")
        decoding = Decoding(0.0, 1.0, parameters.seed)
        if parameters.sampling:
            decoding = Decoding(parameters.temperature or 1.0, parameters.top_p or 1.0, parameters.seed)
        rows, events = server.start_rows(
            prompts, 1, parameters.max_new_tokens, decoding, tuple(parameters.stop)
        )
        (row,) = rows
        prefix = body.inputs if parameters.return_full_text else ""

        def details() -> dict[str, Any]:
            reason = {"stop": "stop_sequence", "length": "length"}.get(row.finish_reason or "", "eos_token")
            if row.finish_reason == "stop" and row.token_ids and not row.stop:
                reason = "eos_token"
            return {"finish_reason": reason, "generated_tokens": len(row.token_ids), "seed": parameters.seed}

        if not stream:
            await server.complete(rows, events)
            answer: dict[str, Any] = {"generated_text": prefix + row.text}
            if parameters.details:
                answer["details"] = {**details(), "prefill": [], "tokens": []}
            return JSONResponse(answer, headers=server.headers(rows))

        count = 0

        def chunk(index: int, event: tuple[str, Any]) -> list[dict[str, Any]]:
            nonlocal count
            kind, value = event
            if kind == "text":
                count += 1
                token = {"id": count, "text": value, "logprob": 0.0, "special": False}
                return [{"index": count, "token": token, "generated_text": None, "details": None}]
            if value == CANCELLED:
                return []
            token = {"id": 0, "text": "", "logprob": 0.0, "special": True}
            final = {
                "index": count + 1,
                "token": token,
                "generated_text": prefix + row.text,
                "details": details() if parameters.details else None,
            }
            return [final]

        first = await server.first_event(rows, events)
        return StreamingResponse(
            server.stream(rows, events, first, chunk),
            media_type="text/event-stream",
            headers=server.headers(rows),
        )

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        return await tgi(await parse_body(request, GenerateRequest), stream=False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        return await tgi(await parse_body(request, GenerateRequest), stream=True)

    @app.post("/")
    async def compat_generate(request: Request) -> Response:
        """TGI's ``POST /``: ``stream`` in the body picks generate or generate_stream."""
        body: GenerateRequest = await parse_body(request, GenerateRequest)
        return await tgi(body, stream=body.stream)

    @app.post("/v1/attribution")
    async def attribute(request: Request) -> JSONResponse:
        body: AttributionRequest = await parse_body(request, AttributionRequest)
        if attribution is None:
            raise RequestError(
                404,
                "no attribution index loaded (dvc repro attribution; codemill serve "
                "--attribution data/attribution)",
                None,
                "not_found_error",
            )
        matches = attribution.query(body.snippet, top_k=body.top_k, threshold=body.threshold)
        return JSONResponse({"object": "list", "data": [match.as_dict() for match in matches]})

    return app
