"""The register stage: log the trained model to the MLflow Model Registry, gate it, move its aliases.

The stage logic is in ``publish.py``; ``registry.py`` holds promote/rollback and the gates, ``serve.py``
serving the champion, ``lineage.py`` the data and run lineage tags.
"""

from components.register.publish import run
from components.stage_runner import Input, Stage

STAGE = Stage("register", run, inputs=(Input("model", "dir"), Input("eval", "file")), has_output=False)

__all__ = ["STAGE", "run"]
