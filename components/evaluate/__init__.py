"""The evaluate stage: benchmarks (as data) in an execution sandbox for many languages, pass@k with
bootstrap intervals, and smooth metrics (gold and held-out bits per byte, next-line exact match).

The stage is :mod:`~components.evaluate.stage` over :mod:`~components.evaluate.evaluator` (one model,
any checkpoint); generation in ``generate.py``, smooth metrics in ``likelihood.py``, scoring in
``scoring.py``, intervals in ``stats.py``, the language table in ``languages.py``, the sandbox in
``sandbox.py`` and its fork server ``fork_server.py``. See docs/evaluation.md.
"""

from components.evaluate.stage import run
from components.stage_runner import Input, Stage

STAGE = Stage("evaluate", run, inputs=(Input("models", "dir"), Input("holdout", "dir")))

__all__ = ["STAGE", "run"]
