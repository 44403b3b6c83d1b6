"""The HTTP application: the OpenAI routes (``openai_routes.py``), the TGI routes (``tgi_routes.py``),
``/health``, ``/v1/attribution``, the API key check and the error bodies.

Bodies are checked by :mod:`components.serve.protocol` (400 naming the field), limits by
:class:`~components.params.serve.ServeLimits` (400 naming the field), capacity by the engine (429).
Streams are server-sent events; a stream starts once its first row is generating, so its header names
the version that answers.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from components.serve.handling import RequestError, Server, openai_error, parse_body, tgi_error
from components.serve.openai_routes import openai_router
from components.serve.protocol import AttributionRequest
from components.serve.tgi_routes import tgi_router


def create_app(server: Server, attribution: Any | None = None, api_key: str | None = None) -> FastAPI:
    """The FastAPI application; the engine and alias follower run for the app's lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="codemill", lifespan=lifespan)

    def render(request: Request) -> Callable[[RequestError], JSONResponse]:
        """OpenAI's error body under /v1/, TGI's elsewhere."""
        return openai_error if request.url.path.startswith("/v1/") else tgi_error

    @app.middleware("http")
    async def api_key_check(request: Request, call_next: Callable) -> Response:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return render(request)(
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
        return render(request)(exc)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        served = server.slot.current
        return {
            "status": "ok",
            "model": served.name,
            "version": served.version,
            "batches": server.engine.batches,
        }

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

    app.include_router(openai_router(server))
    app.include_router(tgi_router(server))
    return app
