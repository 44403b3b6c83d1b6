"""The dedup stage: exact and MinHash-LSH near-duplicate removal at file or repository level."""

from components.dedup.pipeline import run
from components.stage_runner import Input, Stage

STAGE = Stage("dedup", run, inputs=(Input("documents"),))

__all__ = ["STAGE", "run"]
