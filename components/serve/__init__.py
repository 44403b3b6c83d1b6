"""``codemill serve``: an OpenAI- and TGI-compatible inference server for the registry's champion.

``models.py`` loads a version and follows the alias, ``engine.py`` batches and generates,
``protocol.py`` checks request bodies, ``handling.py`` turns requests into rows and rows into answers,
``openai_routes.py`` and ``tgi_routes.py`` are the two APIs, ``app.py`` assembles them (FastAPI on
uvicorn), ``quantize.py`` makes int8 variants; ``components.attribution`` answers "which training files
does this resemble". See docs/serving.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from components.params.serve import ServeConfig
from components.serve.app import create_app
from components.serve.engine import Engine
from components.serve.handling import Server
from components.serve.models import AliasFollower, ModelSlot, ModelSource, load_source

log = logging.getLogger("codemill.serve")


def build_server(source: ModelSource, config: ServeConfig) -> tuple[Server, AliasFollower | None]:
    """Load what ``source`` names now; with an alias, a follower that swaps in the versions it moves to."""
    slot = ModelSlot(load_source(source))
    follower = AliasFollower(source, slot, config.poll_s) if source.alias else None
    return Server(Engine(slot, config), slot, config, source), follower


def serve(source: ModelSource, config: ServeConfig, attribution_dir: str | Path | None = None) -> int:
    """Serve ``source`` on ``config.host:config.port`` until stopped (SIGINT/SIGTERM); its exit code."""
    import uvicorn

    from components.attribution import AttributionIndex

    server, follower = build_server(source, config)
    attribution = AttributionIndex.load(attribution_dir) if attribution_dir else None
    api_key = os.environ.get(config.api_key_env) or None
    app = create_app(server, attribution, api_key)
    if follower is not None:
        follower.start()
    served = server.slot.current
    print(
        f"codemill serve: {served.name} version {served.version} ({source.uri}) on "
        f"http://{config.host}:{config.port}  (OpenAI: /v1, TGI: /generate; API key: "
        f"{'required' if api_key else 'none'})",
        flush=True,
    )
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        if follower is not None:
            follower.stop()
    return 0
