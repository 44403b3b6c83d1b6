"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/completions`` (``suffix``: fill-in-the-middle) and
``/v1/chat/completions``, each streamed as server-sent events when asked (then ``data: [DONE]``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from components.evaluate.generate import fim_prompt
from components.serve.engine import CANCELLED, Decoding, Row
from components.serve.handling import VERSION_HEADER, Prompt, Server, parse_body
from components.serve.models import LoadedModel, weight_bytes
from components.serve.protocol import ChatCompletionRequest, CompletionRequest
from components.tokens.tokenizer import IM_END


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


def envelope_for(
    prefix: str, kind: str, server: Server, served: LoadedModel, rows: Sequence[Row]
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The body of one response (``kind``: its ``object``) around its choices: one id and creation time
    for all of its stream chunks, the version that answered as ``system_fingerprint``."""
    ident, created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": ident,
            "object": kind,
            "created": created,
            "model": served.name,
            "system_fingerprint": server.fingerprint(served, rows),
            "choices": choices,
        }

    return envelope


def openai_router(server: Server) -> APIRouter:
    """The OpenAI routes over ``server``."""
    router = APIRouter()

    @router.get("/v1/models")
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

    @router.post("/v1/completions")
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
        envelope = envelope_for("cmpl", "text_completion", server, served, rows)

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

    @router.post("/v1/chat/completions")
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
        object_kind = "chat.completion.chunk" if body.stream else "chat.completion"
        envelope = envelope_for("chatcmpl", object_kind, server, served, rows)

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
            body_out = {**envelope(choices), "usage": usage(rows, body.n)}
            return JSONResponse(body_out, headers=server.headers(rows))

        started: set[int] = set()

        def chunk(index: int, event: tuple[str, Any]) -> list[dict[str, Any]]:
            kind, value = event
            out = []
            if index not in started:
                started.add(index)
                out.append(
                    envelope(
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
                        [{"index": index, "delta": {"content": value}, "finish_reason": None}],
                    )
                )
            elif value != CANCELLED:
                out.append(
                    envelope(
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

    return router
