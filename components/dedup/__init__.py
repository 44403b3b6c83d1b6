"""The dedup stage: exact and MinHash-LSH near-duplicate removal at file or repository level."""

from components.dedup.pipeline import run

__all__ = ["run"]
