"""The register stage: log the trained model to the MLflow Model Registry, gate it, move its aliases.

The stage logic is in ``stage.py``; ``registry.py`` holds promote/rollback and the gates, ``serve.py``
serving the champion, ``lineage.py`` the data and run lineage tags. Kept light: ``components.config``
imports ``components.register.config``, so nothing here may import ``components.config`` at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.config import Params
    from components.report import StageReport
    from components.stage import StageIO


def run(params: Params, io: StageIO) -> StageReport:
    """Register models/<register.source> as a version of codemill-<model.name>; apply gates and aliases."""
    from components.register.stage import run as run_register

    return run_register(params, io)
