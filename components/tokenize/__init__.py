"""The tokenize stage: byte-level BPE, StarCoder metadata and FIM, packed token files for training.

The stage is :mod:`~components.tokenize.pipeline`; the token format it writes (tokenizer, packing, FIM,
the dataset the trainer reads) is :mod:`components.tokens`.
"""

from components.corpus_stats import token_statistics
from components.stage_runner import Input, Stage
from components.tokenize.pipeline import run

STAGE = Stage("tokenize", run, inputs=(Input("documents"),), statistics=token_statistics)

__all__ = ["STAGE", "run"]
