"""The TGI-compatible routes (llm-vscode, ``huggingface_hub.InferenceClient``): ``/generate``,
``/generate_stream``, ``POST /`` (``stream`` in the body picks which) and ``/info``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from components.serve.engine import CANCELLED, Decoding
from components.serve.handling import Prompt, Server, parse_body
from components.serve.protocol import GenerateRequest


def tgi_router(server: Server) -> APIRouter:
    """The TGI routes over ``server``."""
    router = APIRouter()

    @router.get("/info")
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

    @router.post("/generate")
    async def generate(request: Request) -> Response:
        return await tgi(await parse_body(request, GenerateRequest), stream=False)

    @router.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        return await tgi(await parse_body(request, GenerateRequest), stream=True)

    @router.post("/")
    async def compat_generate(request: Request) -> Response:
        """TGI's ``POST /``: ``stream`` in the body picks generate or generate_stream."""
        body: GenerateRequest = await parse_body(request, GenerateRequest)
        return await tgi(body, stream=body.stream)

    return router
