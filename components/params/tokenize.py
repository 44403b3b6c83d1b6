"""Parameters of the tokenize stage (``tokenize:`` in params.yaml): tokenizer, splits, metadata and FIM."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.params.base import StrictModel

#: 256 byte tokens + 21 special tokens (components/tokens/tokenizer.py) + room for some merges.
MIN_VOCAB_SIZE = 300


class MixtureConfig(StrictModel):
    """Sampling weights of the training split (OpenCoder/StarCoder upsampling), applied when packing.

    A document's weight is its language's times its source's (1 where not listed): it is written
    ``floor(w)`` times, plus once more with probability ``w - floor(w)`` (a hash of its id and the seed),
    so 0.5 keeps about half, 2 repeats every document twice. The validation split is never reweighted.
    """

    #: Weight per ``lang`` (``python: 1.0``, ``c: 2.0``).
    languages: dict[str, float] = Field(default_factory=dict)
    #: Weight per source, keyed by the first part of the repo names (a source's ``name``, e.g. ``system``).
    sources: dict[str, float] = Field(default_factory=dict)

    @field_validator("languages", "sources")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        negative = {key: weight for key, weight in weights.items() if weight < 0}
        if negative:
            raise ValueError(f"weights must be >= 0: {negative}")
        return weights

    def weight(self, lang: str | None, repo: str) -> float:
        """The weight of a document of ``lang`` in ``repo``."""
        return self.languages.get(lang or "", 1.0) * self.sources.get(repo.split("/", 1)[0], 1.0)


class TokenizeConfig(StrictModel):
    """Byte-level BPE training, the held-out split by repo, StarCoder metadata and FIM rates.

    ``fim_rate`` and ``fim_spm_rate`` do not change the stage's output: FIM is applied per document and
    per epoch by the training dataset (:class:`components.tokens.dataset.TokenDataset`), which reads
    them from here.
    """

    #: Size of the BPE vocabulary, special tokens included (uint16 token files up to 65535).
    vocab_size: int = Field(4096, ge=MIN_VOCAB_SIZE, le=2**31 - 1)
    #: A pair must occur at least this often in the training split to become a merge.
    min_frequency: int = Field(2, ge=1)
    #: Train the tokenizer on at most this many content bytes of the training split (documents taken in
    #: id order, a hash, so the sample spreads over repos); ``null`` uses the whole training split.
    train_bytes: int | None = Field(None, gt=0)
    #: Expected fraction of repos held out for validation (chosen by a hash of the repo name).
    val_fraction: float = Field(0.05, gt=0, lt=1)
    #: Probability that a training document starts with ``<reponame>REPO<filename>PATH<gh_stars>STARS\n``.
    metadata_rate: float = Field(0.2, ge=0, le=1)
    #: Probability that a training document is turned into a fill-in-the-middle example (per epoch).
    fim_rate: float = Field(0.5, ge=0, le=1)
    #: Probability that a FIM example uses the SPM order rather than PSM.
    fim_spm_rate: float = Field(0.5, ge=0, le=1)
    #: Training-split weights per language and source.
    mixture: MixtureConfig = MixtureConfig()
