"""The dedup stage: exact and MinHash-LSH near-duplicate removal of files or whole repositories.

1. Per shard (workers): whitespace-normalised sha256 keys, licence/stars of each file and, for the
   near-duplicate levels, shingle sets and MinHash signatures written as ``.npy`` to a work directory.
2. Global step: units (files, or repositories at ``level: repo``) are numbered in preference order
   (permissive licence > stars > smallest repo/path), exact copies are grouped, LSH buckets of each band
   give candidate pairs (optionally rechecked with exact Jaccard), and an array union-find forms clusters
   whose smallest unit number is the survivor. Only a few numbers per document are held here; one
   band of signatures at a time. The LSH and union-find steps run where the per-shard work runs (with
   ``executor.address``: each as one task on a Dask worker, bounded by its memory limit).
3. Per shard (workers): write the kept rows with ``dup_cluster`` / ``dup_cluster_size``, same shard names.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.corpus_stats import language_breakdown
from components.dedup.clusters import (
    ALL_PAIRS_MAX_BUCKET,
    NO_PAIRS,
    bucket_pairs,
    connected_components,
    unique_pairs,
)
from components.dedup.minhash import (
    MinHasher,
    band_hashes,
    exact_keys,
    jaccard,
    optimal_bands_rows,
    shingle_sets,
)
from components.errors import StageError
from components.executor import map_shards, run_one
from components.params import ExecutorConfig, StageContext
from components.params.dedup import DedupConfig
from components.report import ShardResult, StageReport
from components.shards import list_shards, read_shard, table_bytes, write_shard
from components.stage_runner import Exclusions, OutputDirs, StageIO, run_shards, shard_outputs
from components.storage import load_array, load_rows, save_array, work_directory

REQUIRED_COLUMNS = ("id", "repo", "path", "content", "size_bytes", "license", "stars")
CLUSTER_COLUMNS = (
    pa.field("dup_cluster", pa.string(), nullable=False),
    pa.field("dup_cluster_size", pa.int64(), nullable=False),
)

#: Why a document was removed, by level; index 0 means kept.
KEPT, EXACT, NEAR, REPO = 0, 1, 2, 3
DROP_REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate", REPO: "repo_duplicate"}
LEVEL_REASONS = {"none": (), "exact": (EXACT,), "file": (EXACT, NEAR), "repo": (REPO,)}

#: Columns of a dropped document kept in the exclusion dataset.
EXCLUDED_COLUMNS = ("id", "repo", "path", "lang", "content", "size_bytes", "dup_cluster")
#: Candidate pairs rechecked per task of the Jaccard step.
PAIRS_PER_TASK = 20_000
#: Units whose shingle sets a Jaccard task keeps in memory.
UNIT_SHINGLES_CACHED = 256
_LICENSE_SEPARATOR = re.compile(r",|/|\s+or\s+")


def is_permissive(license_value: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether any part of a licence value (``"MIT, Apache-2.0"``) matches a permissive pattern."""
    if not license_value:
        return False
    parts = (part.strip() for part in _LICENSE_SEPARATOR.split(license_value.lower()))
    return any(fnmatch.fnmatchcase(part, pattern) for part in parts if part for pattern in patterns)


def read_checked(path: str) -> pa.Table:
    """Read a shard, failing with the file and column named if a column dedup needs is missing."""
    table = read_shard(path)
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)} needed by dedup")
    return table


# ---------------------------------------------------------------------------------------------- per shard


@dataclass(frozen=True)
class FeatureTask:
    """Inputs of :func:`shard_features` for one shard."""

    shard: str
    #: Work-directory path prefix of this shard's ``.npy`` files (local, shared or ``s3://``).
    prefix: str
    near: bool
    ngram: int
    num_perm: int
    seed: int
    permissive_licenses: tuple[str, ...]


@dataclass(frozen=True)
class ShardFeatures:
    """What the global step needs of one shard's documents (a few numbers and names per document)."""

    ids: pa.Array
    repos: pa.Array
    paths: pa.Array
    permissive: np.ndarray
    stars: np.ndarray
    exact_keys: np.ndarray
    has_shingles: np.ndarray


def signature_path(prefix: str) -> str:
    """(num_perm, n_docs) uint32 signatures of a shard."""
    return f"{prefix}.signatures.npy"


def shingles_path(prefix: str) -> str:
    """Concatenated sorted shingle hashes of a shard's documents."""
    return f"{prefix}.shingles.npy"


def offsets_path(prefix: str) -> str:
    """Offsets delimiting each document's shingles (n_docs + 1)."""
    return f"{prefix}.offsets.npy"


def shard_features(task: FeatureTask) -> ShardFeatures:
    """Exact keys and preference data of a shard; shingles and signatures go to the work directory."""
    table = read_checked(task.shard)
    contents = table["content"].to_pylist()
    licenses = table["license"]
    permissive_of = {
        value: is_permissive(value, task.permissive_licenses) for value in pc.unique(licenses).to_pylist()
    }
    permissive = np.array([permissive_of[value] for value in licenses.to_pylist()], dtype=bool)
    has_shingles = np.zeros(len(contents), dtype=bool)
    if task.near:
        shingles, offsets = shingle_sets(contents, task.ngram, task.seed)
        has_shingles = np.diff(offsets) > 0
        save_array(shingles_path(task.prefix), shingles)
        save_array(offsets_path(task.prefix), offsets)
        save_array(
            signature_path(task.prefix), MinHasher(task.num_perm, task.seed).signatures(shingles, offsets)
        )
    return ShardFeatures(
        ids=table["id"].combine_chunks(),
        repos=table["repo"].combine_chunks(),
        paths=table["path"].combine_chunks(),
        permissive=permissive,
        stars=pc.fill_null(table["stars"], 0).to_numpy().astype(np.int64),
        exact_keys=exact_keys(contents),
        has_shingles=has_shingles,
    )


@dataclass(frozen=True)
class JaccardTask:
    """Candidate pairs of units to recheck, with where each unit's documents' shingles are."""

    prefixes: tuple[str, ...]
    shard_bounds: np.ndarray
    pairs: np.ndarray
    #: Sorted unit numbers of the pairs, and their documents (CSR: ``member_docs[offsets[i]:offsets[i+1]]``).
    units: np.ndarray
    member_offsets: np.ndarray
    member_docs: np.ndarray


def pair_similarities(task: JaccardTask) -> np.ndarray:
    """Exact Jaccard similarity of each pair (a repository's shingles are the union of its files').

    Each document's shingles are read as a row range and copied, so no shard file stays mapped: memory is
    the shards' offsets (8 bytes a document) plus the last :data:`UNIT_SHINGLES_CACHED` units' shingles,
    whatever the corpus size. Pairs are sorted, so a unit's pairs mostly follow one another.
    """

    @functools.cache
    def shard_offsets(shard: int) -> np.ndarray:
        return np.array(load_array(offsets_path(task.prefixes[shard])))

    def document_shingles(doc: int) -> np.ndarray:
        shard = int(np.searchsorted(task.shard_bounds, doc, side="right")) - 1
        offsets = shard_offsets(shard)
        row = doc - task.shard_bounds[shard]
        return np.array(load_rows(shingles_path(task.prefixes[shard]), offsets[row], offsets[row + 1]))

    @functools.lru_cache(maxsize=UNIT_SHINGLES_CACHED)
    def unit_shingles(unit: int) -> np.ndarray:
        index = int(np.searchsorted(task.units, unit))
        docs = task.member_docs[task.member_offsets[index] : task.member_offsets[index + 1]]
        parts = [document_shingles(int(doc)) for doc in docs]
        return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))

    return np.array([jaccard(unit_shingles(int(u)), unit_shingles(int(v))) for u, v in task.pairs])


@dataclass(frozen=True)
class WriteTask:
    """One output shard: each input row's decision and cluster columns (``None``: keep all, singletons)."""

    shard: str
    output: str
    excluded: str
    reason: np.ndarray | None = None
    dup_cluster: pa.Array | None = None
    dup_cluster_size: np.ndarray | None = None


def write_kept_rows(task: WriteTask) -> ShardResult:
    """Write the kept rows of a shard with the cluster columns, and the dropped ones (their cluster as the
    detail) to the exclusion dataset."""
    table = read_checked(task.shard)
    for field in CLUSTER_COLUMNS:
        if field.name in table.column_names:
            table = table.drop_columns(field.name)
    cluster = task.dup_cluster if task.dup_cluster is not None else table["id"].combine_chunks()
    sizes = task.dup_cluster_size if task.dup_cluster_size is not None else np.ones(table.num_rows, np.int64)
    table = table.append_column(CLUSTER_COLUMNS[0], pa.chunked_array([cluster], pa.string()))
    table = table.append_column(CLUSTER_COLUMNS[1], pa.chunked_array([pa.array(sizes, pa.int64())]))
    reason = task.reason if task.reason is not None else np.zeros(table.num_rows, np.int8)
    kept = table.filter(pa.array(reason == KEPT))
    excluded = Exclusions()
    dropped = np.flatnonzero(reason != KEPT)
    documents = table.take(pa.array(dropped, pa.int64())).select(list(EXCLUDED_COLUMNS)).to_pylist()
    for row, document in zip(dropped, documents, strict=True):
        excluded.drop(DROP_REASONS[int(reason[row])], document, f"cluster {document['dup_cluster']}")
    write_shard(kept, task.output)
    excluded.write(task.excluded)
    return ShardResult(table.num_rows, kept.num_rows, table_bytes(table), table_bytes(kept), excluded.counts)


# -------------------------------------------------------------------------------------------- global step


@dataclass(frozen=True)
class Corpus:
    """Per-document arrays of all shards, in shard order (document number = position)."""

    features: ShardFeatures
    #: Document number of each shard's first row, plus the total (n_shards + 1).
    shard_bounds: np.ndarray
    prefixes: tuple[str, ...]


def concat_features(parts: list[ShardFeatures]) -> ShardFeatures:
    """All shards' features as one."""

    def arrays(name: str) -> pa.Array:
        return pa.concat_arrays([getattr(part, name) for part in parts])

    def numbers(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return ShardFeatures(
        ids=arrays("ids"),
        repos=arrays("repos"),
        paths=arrays("paths"),
        permissive=numbers("permissive"),
        stars=numbers("stars"),
        exact_keys=numbers("exact_keys"),
        has_shingles=numbers("has_shingles"),
    )


@dataclass(frozen=True)
class Units:
    """What is deduplicated (files, or repositories), numbered in preference order."""

    unit_of_doc: np.ndarray
    #: Keys equal for exact duplicates: a file's content key, or a repository's sum of its files' keys.
    exact_keys: np.ndarray
    has_shingles: np.ndarray
    #: ``dup_cluster`` value naming each unit: a file's id, or a repository's name.
    names: pa.Array

    @property
    def count(self) -> int:
        """Number of units."""
        return len(self.exact_keys)

    @functools.cached_property
    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """Documents grouped by unit (CSR): unit ``u`` has ``docs[bounds[u]:bounds[u + 1]]``."""
        docs = np.argsort(self.unit_of_doc, kind="stable")
        return docs, np.searchsorted(self.unit_of_doc[docs], np.arange(self.count + 1))


def preference_ranks(table: pa.Table) -> np.ndarray:
    """Rank of each row when sorting by all columns ascending (0 = first): a total, input-order-free order."""
    order = pc.sort_indices(table, sort_keys=[(name, "ascending") for name in table.column_names]).to_numpy()
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def file_units(docs: ShardFeatures) -> Units:
    """One unit per file; preferred: permissive licence, more stars, then smallest (repo, path)."""
    ranks = preference_ranks(
        pa.table(
            {
                "not_permissive": ~docs.permissive,
                "negative_stars": -docs.stars,
                "repo": docs.repos,
                "path": docs.paths,
                "key_high": docs.exact_keys[:, 0],
                "key_low": docs.exact_keys[:, 1],
            }
        )
    )
    by_rank = np.argsort(ranks)
    return Units(
        unit_of_doc=ranks,
        exact_keys=docs.exact_keys[by_rank],
        has_shingles=docs.has_shingles[by_rank],
        names=docs.ids.take(pa.array(by_rank)),
    )


def repo_units(docs: ShardFeatures) -> Units:
    """One unit per repository; preferred: permissive (any file), more stars (its maximum), smallest name.

    A repository's shingle set is the union of its files' (its files concatenated, less the few shingles
    that would span two files): it needs no file order and merges across shards, and its MinHash is the
    minimum of its files' signatures. Exact copies: equal multisets of whitespace-normalised file contents.
    """
    encoded = docs.repos.dictionary_encode()
    repo_of_doc = encoded.indices.to_numpy().astype(np.int64)
    n_repos = len(encoded.dictionary)
    permissive = np.zeros(n_repos, dtype=bool)
    np.logical_or.at(permissive, repo_of_doc, docs.permissive)
    stars = np.full(n_repos, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(stars, repo_of_doc, docs.stars)
    keys = np.zeros((n_repos, 2), dtype=np.uint64)
    np.add.at(keys, repo_of_doc, docs.exact_keys)  # a multiset hash: wraps mod 2^64, order-free
    has_shingles = np.zeros(n_repos, dtype=bool)
    np.logical_or.at(has_shingles, repo_of_doc, docs.has_shingles)
    ranks = preference_ranks(
        pa.table({"not_permissive": ~permissive, "negative_stars": -stars, "repo": encoded.dictionary})
    )
    by_rank = np.argsort(ranks)
    return Units(
        unit_of_doc=ranks[repo_of_doc],
        exact_keys=keys[by_rank],
        has_shingles=has_shingles[by_rank],
        names=encoded.dictionary.take(pa.array(by_rank)),
    )


def band_block(prefixes: tuple[str, ...], first_row: int, rows: int) -> np.ndarray:
    """(rows, n_docs) signature rows ``first_row:first_row + rows`` of every shard (local: memory-mapped)."""
    blocks = [load_rows(signature_path(prefix), first_row, first_row + rows) for prefix in prefixes]
    return np.concatenate(blocks, axis=1)


@dataclass(frozen=True)
class CandidateTask:
    """Inputs of :func:`lsh_candidates`: a few numbers per document, sent to a worker as one task."""

    prefixes: tuple[str, ...]
    #: Documents grouped by unit (CSR, :attr:`Units.members`).
    member_docs: np.ndarray
    member_bounds: np.ndarray
    #: Units that take part (have shingles and are not an exact copy of a preferred unit).
    eligible: np.ndarray
    bands: int
    rows: int


def lsh_candidates(task: CandidateTask) -> np.ndarray:
    """Pairs of eligible units sharing an LSH bucket in at least one band.

    A unit's signature is the minimum over its documents' signatures (the MinHash of the union of their
    shingles), computed one band at a time: memory is one band of signatures plus the pairs found.
    """
    docs, bounds, rows = task.member_docs, task.member_bounds, task.rows
    eligible_units = np.flatnonzero(task.eligible)
    if len(eligible_units) < 2:
        return NO_PAIRS
    pairs = []
    for band in range(task.bands):
        block = band_block(task.prefixes, band * rows, rows)
        unit_rows = np.minimum.reduceat(block[:, docs], bounds[:-1], axis=1)
        keys = band_hashes(unit_rows[:, eligible_units])
        pairs.append(bucket_pairs(keys, eligible_units, ALL_PAIRS_MAX_BUCKET))
    return unique_pairs(np.concatenate(pairs))


def jaccard_tasks(corpus: Corpus, units: Units, pairs: np.ndarray) -> list[JaccardTask]:
    """Split candidate pairs into tasks that each carry only their own units' document lists."""
    docs, bounds = units.members
    tasks = []
    for start in range(0, len(pairs), PAIRS_PER_TASK):
        chunk = pairs[start : start + PAIRS_PER_TASK]
        involved = np.unique(chunk)
        member_offsets = np.zeros(len(involved) + 1, dtype=np.int64)
        np.cumsum(bounds[involved + 1] - bounds[involved], out=member_offsets[1:])
        member_docs = np.concatenate([docs[bounds[unit] : bounds[unit + 1]] for unit in involved])
        tasks.append(
            JaccardTask(corpus.prefixes, corpus.shard_bounds, chunk, involved, member_offsets, member_docs)
        )
    return tasks


@dataclass(frozen=True)
class Decisions:
    """Per document: kept or why dropped, and its cluster columns; plus counts for the report."""

    reason: np.ndarray
    dup_cluster: pa.Array
    dup_cluster_size: np.ndarray
    metrics: dict[str, float]
    details: dict[str, object]


def lsh_shape(config: DedupConfig) -> tuple[int, int]:
    """(bands, rows) from params, or the FP+FN-optimal split of ``num_perm`` at ``threshold``."""
    if config.bands is not None and config.rows is not None:
        return config.bands, config.rows
    return optimal_bands_rows(config.threshold, config.num_perm)


def decide(corpus: Corpus, config: DedupConfig, executor: ExecutorConfig) -> Decisions:
    """Cluster the units and choose survivors: the global step."""
    docs = corpus.features
    units = repo_units(docs) if config.level == "repo" else file_units(docs)
    unit_ids = np.arange(units.count)
    exact_pairs = bucket_pairs(units.exact_keys, unit_ids, all_pairs_max_bucket=1)
    metrics: dict[str, float] = {}
    details: dict[str, object] = {"level": config.level, "units": units.count}
    near_pairs = exact_pairs[:0]
    if config.level in ("file", "repo"):
        bands, rows = lsh_shape(config)
        details.update(bands=bands, rows=rows)
        representative = units.has_shingles.copy()
        representative[exact_pairs[:, 1]] = False  # exact copies share their group's signature
        members, bounds = units.members
        candidate_task = CandidateTask(corpus.prefixes, members, bounds, representative, bands, rows)
        candidates = run_one(lsh_candidates, candidate_task, executor)
        near_pairs = candidates
        if config.verify_jaccard and len(candidates):
            tasks = jaccard_tasks(corpus, units, candidates)
            similarity = np.concatenate(map_shards(pair_similarities, tasks, executor))
            near_pairs = candidates[similarity >= config.threshold]
        metrics.update(
            candidate_pairs=len(candidates),
            near_duplicate_pairs=len(near_pairs),
            jaccard_false_positives=len(candidates) - len(near_pairs),
        )
    union_find = functools.partial(connected_components, units.count)
    roots = run_one(union_find, np.concatenate([exact_pairs, near_pairs]), executor)
    cluster_sizes = np.bincount(roots, minlength=units.count)
    metrics["duplicate_clusters"] = int(np.sum(cluster_sizes > 1))

    unit = units.unit_of_doc
    root = roots[unit]
    reason = np.where(root == unit, KEPT, REPO if config.level == "repo" else NEAR).astype(np.int8)
    if config.level != "repo":
        exact_copy = np.all(units.exact_keys[unit] == units.exact_keys[root], axis=1)
        reason[(reason == NEAR) & exact_copy] = EXACT
    return Decisions(
        reason=reason,
        dup_cluster=units.names.take(pa.array(root)),
        dup_cluster_size=cluster_sizes[root].astype(np.int64),
        metrics=metrics,
        details=details,
    )


# ---------------------------------------------------------------------------------------------- the stage


def extract_corpus(shards: list[str], work_dir: str, config: DedupConfig, executor: ExecutorConfig) -> Corpus:
    """Map :func:`shard_features` over the shards and gather the per-document arrays."""
    prefixes = tuple(f"{work_dir.rstrip('/')}/{index:05d}" for index in range(len(shards)))
    patterns = tuple(pattern.lower() for pattern in config.permissive_licenses)
    tasks = [
        FeatureTask(
            shard=shard,
            prefix=prefix,
            near=config.level in ("file", "repo"),
            ngram=config.ngram,
            num_perm=config.num_perm,
            seed=config.seed,
            permissive_licenses=patterns,
        )
        for shard, prefix in zip(shards, prefixes, strict=True)
    ]
    parts = map_shards(shard_features, tasks, executor)
    shard_bounds = np.cumsum([0] + [len(part.ids) for part in parts])
    return Corpus(concat_features(parts), shard_bounds, prefixes)


def write_tasks(
    shards: list[str], out: OutputDirs, corpus: Corpus | None, decisions: Decisions | None
) -> list[WriteTask]:
    """One task per input shard, writing the shard of the same name; no decisions: keep everything."""
    tasks = []
    for index, shard in enumerate(shards):
        if corpus is None or decisions is None:
            tasks.append(WriteTask(shard, out.shard(shard), out.exclusions(shard)))
            continue
        start, stop = int(corpus.shard_bounds[index]), int(corpus.shard_bounds[index + 1])
        tasks.append(
            WriteTask(
                shard,
                out.shard(shard),
                out.exclusions(shard),
                reason=decisions.reason[start:stop],
                dup_cluster=decisions.dup_cluster[start:stop],
                dup_cluster_size=decisions.dup_cluster_size[start:stop],
            )
        )
    return tasks


def run(config: DedupConfig, context: StageContext, io: StageIO) -> StageReport:
    """Remove exact and near-duplicate files (or repositories) and tag every kept file's cluster."""
    shards = list_shards(io.input("documents"))
    report = StageReport(stage="dedup")
    report.merge_drops({DROP_REASONS[code]: 0 for code in LEVEL_REASONS[config.level]})
    corpus = decisions = None
    with work_directory(context.executor.work_dir, prefix="codemill-dedup-") as work_dir:
        if config.level != "none":
            corpus = extract_corpus(shards, work_dir, config, context.executor)
            decisions = decide(corpus, config, context.executor)
            report.metrics.update(decisions.metrics)
            report.details.update(decisions.details)
        with shard_outputs(io.require_output("dedup")) as out:
            run_shards(write_kept_rows, write_tasks(shards, out, corpus, decisions), context, report)
            report.details["languages"] = language_breakdown(out.output, out.excluded)
    report.metrics["dedup_ratio"] = 1 - report.files_out / report.files_in if report.files_in else 0.0
    report.metrics["dedup_byte_ratio"] = 1 - report.bytes_out / report.bytes_in if report.bytes_in else 0.0
    return report
