"""The evaluate stage: HumanEval in an execution sandbox, the unbiased pass@k estimator, bits per byte.

The stage is :mod:`~components.evaluate.evaluator` (generation in ``generate.py``, scoring in
``humaneval.py``, the sandbox in ``sandbox.py`` and its fork server ``fork_server.py``).
"""

from components.evaluate.evaluator import run
from components.stage_runner import Input, Stage

STAGE = Stage("evaluate", run, inputs=(Input("models", "dir"), Input("tokens", "tokens")))

__all__ = ["STAGE", "run"]
