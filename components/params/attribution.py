"""Parameters of the attribution index (``attribution:`` in params.yaml; ``codemill attribute``)."""

from pydantic import ConfigDict, Field

from components.params.base import StrictModel
from components.params.dedup import DedupConfig


class AttributionConfig(StrictModel):
    """Which training documents a snippet is reported as resembling."""

    #: Estimated Jaccard similarity (of dedup's word shingles) from which a document is a match.
    threshold: float = Field(0.5, gt=0, le=1)
    #: Matches returned per query unless the query asks for another number.
    top_k: int = Field(5, ge=1, le=100)


class AttributionJob(StrictModel):
    """The index: ``attribution:`` plus dedup's shingling and MinHash (same signatures as dedup's)."""

    attribution: AttributionConfig = AttributionConfig()
    dedup: DedupConfig = DedupConfig()

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
