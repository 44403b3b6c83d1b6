"""The dedup stage: exact and MinHash-LSH near-duplicate removal at file or repository level."""

from components.corpus_stats import stage_statistics
from components.dedup.pipeline import run
from components.stage_runner import Input, Stage

STAGE = Stage("dedup", run, inputs=(Input("documents"),), statistics=stage_statistics)

__all__ = ["STAGE", "run"]
