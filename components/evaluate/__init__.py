"""HumanEval evaluation: an isolated execution sandbox, the unbiased pass@k estimator and sample scoring.

The stage logic is in ``stage.py`` (generation in ``generate.py``). Kept light: ``components.config``
imports ``components.evaluate.config``, so nothing here may import ``components.config`` at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.config import Params
    from components.report import StageReport
    from components.stage import StageIO


def run(params: Params, io: StageIO) -> StageReport:
    """Evaluate the exported models on HumanEval (sandboxed pass@k) and validation bits per byte."""
    from components.evaluate.stage import run as run_evaluate

    return run_evaluate(params, io)
