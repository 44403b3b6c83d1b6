"""attribution stage and index: which training documents a snippet resembles (StarCoder's VS Code tool).

Input ``data/clean`` (the documents the model trains on, after redaction); output ``data/attribution/``:
``signatures.npy`` (documents x ``dedup.num_perm`` uint32 MinHash signatures, dedup's shingles and
permutations, so a similarity here means what it means to dedup), ``bands.npy`` (the LSH bucket keys
per band, sorted, with ``order.npy`` mapping them back to documents), ``documents.parquet`` (repo, path,
licence) and ``index.json`` (the shingling and LSH shape). Built once by DVC; ``codemill attribute`` and
the server's ``/v1/attribution`` load it.

A query is shingled and signed the same way; documents sharing an LSH bucket with it are candidates, and
their estimated Jaccard similarity (share of equal signature entries) ranks them. Matches below
``attribution.threshold`` are not reported: new code gets an empty answer. The LSH shape is chosen for
the threshold (``optimal_bands_rows``), so a document at the threshold is found with probability ~0.5 and
one at 0.8 almost surely.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.dedup.minhash import MinHasher, band_hashes, optimal_bands_rows, shingle_sets
from components.errors import StageError
from components.params import StageContext
from components.params.attribution import AttributionJob
from components.report import StageReport
from components.shards import atomic_output_dir, iter_tables
from components.stage_runner import Input, Stage, StageIO

INDEX_FILE = "index.json"
METADATA_COLUMNS = ["repo", "path", "license", "id"]


@dataclass(frozen=True)
class Match:
    """A training document resembling the query."""

    repo: str
    path: str
    license: str | None
    id: str
    jaccard: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class IndexShape:
    """How signatures and buckets are made (stored in ``index.json``; queries must match it)."""

    ngram: int
    num_perm: int
    seed: int
    bands: int
    rows: int
    threshold: float
    top_k: int


def band_keys(signatures: np.ndarray, shape: IndexShape) -> np.ndarray:
    """(bands, n) uint64 LSH bucket keys of (num_perm, n) signatures."""
    return np.stack(
        [band_hashes(signatures[b * shape.rows : (b + 1) * shape.rows]) for b in range(shape.bands)]
    )


def build(job: AttributionJob, documents: str, output: str) -> StageReport:
    """Sign every document of ``documents`` and write the index folder ``output``."""
    dedup, config = job.dedup, job.attribution
    bands, rows = optimal_bands_rows(config.threshold, dedup.num_perm)
    shape = IndexShape(dedup.ngram, dedup.num_perm, dedup.seed, bands, rows, config.threshold, config.top_k)
    hasher = MinHasher(dedup.num_perm, dedup.seed)
    signatures, metadata = [], []
    for table in iter_tables(documents, columns=["content", *METADATA_COLUMNS]):
        shingles, offsets = shingle_sets(table.column("content").to_pylist(), dedup.ngram, dedup.seed)
        signatures.append(hasher.signatures(shingles, offsets))
        metadata.append(table.select(METADATA_COLUMNS))
    if not signatures:
        raise StageError(f"{documents}: no documents to index")
    all_signatures = np.concatenate(signatures, axis=1)
    keys = band_keys(all_signatures, shape)
    order = np.argsort(keys, axis=1, kind="stable")
    with atomic_output_dir(output) as out:
        folder = Path(out)
        np.save(folder / "signatures.npy", np.ascontiguousarray(all_signatures.T))
        np.save(folder / "bands.npy", np.take_along_axis(keys, order, axis=1))
        np.save(folder / "order.npy", order.astype(np.int64))
        pq.write_table(pa.concat_tables(metadata), folder / "documents.parquet")
        (folder / INDEX_FILE).write_text(json.dumps(asdict(shape), indent=2) + "\n", encoding="utf-8")
    report = StageReport(
        stage="attribution", files_in=all_signatures.shape[1], files_out=all_signatures.shape[1]
    )
    report.metrics = {"documents": float(all_signatures.shape[1]), "bands": float(bands), "rows": float(rows)}
    return report


class AttributionIndex:
    """A loaded index; :meth:`query` finds the documents nearest to a snippet."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shape = IndexShape(**json.loads((folder / INDEX_FILE).read_text(encoding="utf-8")))
        self.signatures = np.load(folder / "signatures.npy", mmap_mode="r")
        self.bands = np.load(folder / "bands.npy")
        self.order = np.load(folder / "order.npy")
        self.documents = pq.read_table(folder / "documents.parquet").to_pylist()
        self.hasher = MinHasher(self.shape.num_perm, self.shape.seed)

    @classmethod
    def load(cls, folder: str | Path) -> AttributionIndex:
        """Load the index folder the attribution stage wrote; a clear error when it is not one."""
        path = Path(folder)
        if not (path / INDEX_FILE).is_file():
            raise StageError(f"{path}: no attribution index ({INDEX_FILE}); run `dvc repro attribution`")
        return cls(path)

    def signature(self, snippet: str) -> np.ndarray:
        """(num_perm, 1) MinHash signature of a snippet."""
        shingles, offsets = shingle_sets([snippet], self.shape.ngram, self.shape.seed)
        return self.hasher.signatures(shingles, offsets)

    def candidates(self, signature: np.ndarray) -> np.ndarray:
        """Documents sharing at least one LSH bucket with ``signature``."""
        found = []
        for band, key in enumerate(band_keys(signature, self.shape)[:, 0]):
            keys = self.bands[band]
            start, stop = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
            found.append(self.order[band, start:stop])
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    def query(self, snippet: str, top_k: int | None = None, threshold: float | None = None) -> list[Match]:
        """Up to ``top_k`` documents with estimated Jaccard >= ``threshold``, most similar first; [] when
        the snippet has fewer words than one shingle."""
        top_k = top_k or self.shape.top_k
        threshold = self.shape.threshold if threshold is None else threshold
        signature = self.signature(snippet)
        if (signature == np.iinfo(np.uint32).max).all():
            return []
        docs = self.candidates(signature)
        if not len(docs):
            return []
        similarity = (np.asarray(self.signatures[docs]) == signature[:, 0]).mean(axis=1)
        ranked = sorted(
            zip(similarity.tolist(), docs.tolist(), strict=True), key=lambda item: (-item[0], item[1])
        )
        matches = []
        for jaccard, doc in ranked[:top_k]:
            if jaccard < threshold:
                break
            meta = self.documents[doc]
            matches.append(Match(meta["repo"], meta["path"], meta["license"], meta["id"], round(jaccard, 4)))
        return matches


def run(job: AttributionJob, context: StageContext, io: StageIO) -> StageReport:
    """Build the attribution index of ``data/clean``."""
    return build(job, io.input("documents"), io.require_output("attribution"))


STAGE = Stage("attribution", run, inputs=(Input("documents", "shards"),))
