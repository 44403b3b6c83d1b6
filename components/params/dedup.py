"""Parameters of the dedup stage (``dedup:`` in params.yaml)."""

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from components.params.base import StrictModel

DedupLevel = Literal["none", "exact", "file", "repo"]

#: Licences a survivor is preferred for (BigCode: permissive > stars > ...). Lower-case fnmatch patterns,
#: matched against each comma/"or"/"/"-separated part of a document's ``license`` value.
PERMISSIVE_LICENSES = (
    "mit",
    "mit-0",
    "mit license",
    "apache-2.0",
    "apache 2.0",
    "apache license*2.0",
    "apache software license",
    "bsd",
    "bsd-*",
    "bsd license",
    "0bsd",
    "isc",
    "isc license",
    "unlicense",
    "the unlicense",
    "cc0-1.0",
    "zlib",
    "python-2.0",
    "psf-2.0",
    "bsl-1.0",
)


class DedupConfig(StrictModel):
    """Exact + MinHash-LSH near-duplicate removal. ``level`` is the ablation axis.

    ``none`` passes everything through, ``exact`` removes whitespace-normalised copies, ``file`` adds
    near-duplicate files, ``repo`` removes whole repositories that (near-)duplicate another one.
    """

    level: DedupLevel = "file"
    #: Words per shingle.
    ngram: int = Field(5, ge=1)
    num_perm: int = Field(256, ge=16, le=4096)
    #: Jaccard similarity from which two documents (or repos) are duplicates.
    threshold: float = Field(0.7, gt=0, le=1)
    #: LSH bands x rows; chosen to minimise FP+FN weight at ``threshold`` when both are null.
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1, validate_default=True)
    #: Recheck candidate pairs with exact Jaccard (removes LSH false positives).
    verify_jaccard: bool = True
    #: Seeds the token hash and the MinHash permutations (same seed -> same signatures on any machine).
    seed: int = Field(42, ge=0, lt=2**63)
    permissive_licenses: list[str] = Field(default_factory=lambda: list(PERMISSIVE_LICENSES))

    @field_validator("rows")
    @classmethod
    def _bands_times_rows_fit(cls, rows: int | None, info: ValidationInfo) -> int | None:
        """``bands`` and ``rows`` are set together and ``bands * rows <= num_perm``."""
        bands, num_perm = info.data.get("bands"), info.data.get("num_perm")
        if (bands is None) != (rows is None):
            raise ValueError(
                f"set both dedup.bands and dedup.rows, or neither (got bands={bands}, rows={rows})"
            )
        if bands is not None and rows is not None and num_perm is not None and bands * rows > num_perm:
            raise ValueError(
                f"dedup.bands * dedup.rows = {bands} * {rows} = {bands * rows} "
                f"exceeds dedup.num_perm = {num_perm}"
            )
        return rows
